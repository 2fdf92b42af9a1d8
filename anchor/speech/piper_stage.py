"""The streaming TTS stage: text deltas in, output-rate audio chunks out.

Text is cut into phrases as it arrives (a short first phrase, then sentence
and clause boundaries), each phrase is normalised, phonemized and
synthesized through the process's engine hub, resampled to the output rate
with filter state carried across phrases, and sent on in chunks of at most
``chunk_ms`` with pts continuous within the utterance.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, Phonemes, TextDelta
from anchor.core.resample import StreamingResampler
from anchor.core.stage import Stage, StageContext
from anchor.speech.normalize import normalize
from anchor.speech.phrases import PhraseSplitter
from engines.voices.piper import JOE_MODEL, PiperVoice, audio_of, durations_of


@dataclass
class _Utterance:
    splitter: PhraseSplitter
    resampler: StreamingResampler
    pts: int = 0
    voiced: int = 0  # samples at the voice's own rate fed to the resampler: where the next phrase starts


class PiperTTS(Stage):
    """Speaks ``TextDelta``s with a Piper voice run by the engine hub (engine ``piper-joe``)."""

    accepts = (TextDelta,)

    def __init__(
        self,
        name: str = "tts",
        *,
        engine: str = "piper-joe",
        model: Path | None = None,
        first_words: int = 6,
        chunk_ms: float = 100.0,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(name, timeout_s=timeout_s)
        self.engine = engine
        self._model = model
        self.first_words = first_words
        self.chunk_ms = chunk_ms
        self._voice: PiperVoice | None = None
        self._utterances: dict[str, _Utterance] = {}

    def buffered_chars(self, utterance_id: str) -> int:
        """Text of ``utterance_id`` received and not yet cut into a phrase (0 when none is held)."""
        state = self._utterances.get(utterance_id)
        return 0 if state is None else state.splitter.buffered_chars

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        model = self._model or JOE_MODEL.resolve()
        self._voice = await ctx.run_blocking(PiperVoice.for_model, model)
        await ctx.engines.prepare(self.engine)

    @property
    def voice(self) -> PiperVoice:
        if self._voice is None:
            raise RuntimeError(f"stage {self.name} is not started")
        return self._voice

    def _state(self, utterance_id: str) -> _Utterance:
        state = self._utterances.get(utterance_id)
        if state is None:
            out_rate = self.ctx.settings.media.sample_rate
            state = _Utterance(
                PhraseSplitter(first_words=self.first_words),
                StreamingResampler(self.voice.config.sample_rate, out_rate),
            )
            self._utterances[utterance_id] = state
        return state

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, TextDelta):
            state = self._state(uid)
            for phrase in state.splitter.feed(frame.text):
                async for chunk in self._speak(uid, state, phrase):
                    yield chunk
        elif isinstance(frame, EndOfUtterance):
            ending = self._utterances.pop(uid, None)
            if ending is not None:
                for phrase in ending.splitter.flush():
                    async for chunk in self._speak(uid, ending, phrase):
                        yield chunk
                for chunk in self._chunks(uid, ending, await self.run_blocking(ending.resampler.flush)):
                    yield chunk
            yield frame
        else:
            yield frame

    async def _speak(
        self, uid: str, state: _Utterance, phrase: str
    ) -> AsyncGenerator[AudioChunk | Phonemes, None]:
        text = normalize(phrase)
        if not any(ch.isalnum() for ch in text):
            return
        for ids in await self.run_blocking(self.voice.phoneme_ids, text):
            outputs = await self.ctx.infer(self.engine, self.voice.inputs(ids))
            audio = np.clip(audio_of(outputs), -1.0, 1.0)
            # The voice's own durations time its phonemes exactly: the face shapes the mouth from them.
            frames = durations_of(outputs)
            hop = len(audio) / max(1, int(frames.sum()))  # 256 samples a frame for Piper's voices
            edges = state.voiced + np.round(np.concatenate([[0], np.cumsum(frames)]) * hop)
            yield Phonemes(
                symbols=tuple(self.voice.symbols(ids)),
                bounds=tuple(int(e) for e in edges),
                sample_rate=self.voice.config.sample_rate,
                utterance_id=uid,
            )
            state.voiced += len(audio)
            # Resampling a phrase takes ~6 ms per second of audio: off the loop, away from the pacer.
            resampled = await self.run_blocking(state.resampler.process, audio)
            for chunk in self._chunks(uid, state, resampled):
                yield chunk

    def _chunks(self, uid: str, state: _Utterance, audio: npt.NDArray[np.float32]) -> list[AudioChunk]:
        rate = self.ctx.settings.media.sample_rate
        step = max(1, int(rate * self.chunk_ms / 1000))
        chunks = []
        for start in range(0, len(audio), step):
            pcm = np.ascontiguousarray(audio[start : start + step], dtype=np.float32)
            chunks.append(AudioChunk(pcm=pcm, sample_rate=rate, pts=state.pts, utterance_id=uid))
            state.pts += len(pcm)
        return chunks

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        for uid in utterance_ids:
            self._utterances.pop(uid, None)
