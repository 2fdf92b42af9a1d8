"""The streaming recognizer stage: viewer audio in; barge-in signal, partials and finals out.

- ``SpeechStarted`` (control lane) as soon as the VAD confirms speech: this is
  what interrupts the anchor.
- ``Transcript(final=False)`` about every ``partial_ms`` of speech, stabilised
  by local agreement: only words two consecutive hypotheses share are sent,
  and words once sent stay as sent (a later "bank raised" for a sent
  "bank-raised" only appends what follows), so a partial never takes a word back.
- ``Transcript(final=True)`` at end of speech, with word timings (ms since
  the stream began), unless Whisper's own confidence says it heard nothing.
  The final is decoded from the first quiet window on, while the VAD waits
  ``vad_end_ms`` (350 ms) to confirm the end; no partial starts in that time,
  since the one decoder would queue the final behind it.

VAD runs on every chunk, on the event loop itself (about 1.4 ms per 32 ms
window): barge-in must not queue behind Whisper decodes that hold the
worker threads. Partial decoding runs in one background task, so a slow
decode never delays barge-in. Audio kept is bounded: the utterance
(at most ``max_utterance_s``) and a short pre-roll, plus the VAD's look-back
so that a start confirmed a few windows late still gets all of its pre-roll.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator

import numpy as np
import numpy.typing as npt

from anchor.core.aio import cancel_and_wait
from anchor.core.frames import AudioChunk, Frame, SpeechStarted, Transcript, WordTiming
from anchor.core.stage import Stage, StageContext
from anchor.listen.audio_in import InputConditioner
from anchor.listen.vad import RATE, VadSegmenter
from engines.asr.ct2_whisper import CT2Whisper, Recognition

PRE_ROLL_S = 0.3


def _key(word: str) -> str:
    """What a word says, without case, punctuation or hyphenation."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _agreed(a: list[str], b: list[str]) -> list[str]:
    """The longest common word prefix of two hypotheses (compared by ``_key``)."""
    out = []
    for x, y in zip(a, b, strict=False):
        if _key(x) != _key(y):
            break
        out.append(y)
    return out


def _extension(committed: list[str], agreed: list[str]) -> list[str] | None:
    """The words of ``agreed`` past what ``committed`` says ([] if none), or None when they disagree.

    Compared as one run of letters, so a change of hyphenation or word split
    inside the committed part is not a disagreement.
    """
    said = "".join(_key(w) for w in committed)
    heard = ""
    for i, word in enumerate(agreed):
        if len(heard) == len(said):
            return agreed[i:] if heard == said else None
        heard += _key(word)
        if len(heard) > len(said):
            return None
    return [] if said.startswith(heard) else None


class SpeechRecognizer(Stage):
    accepts = (AudioChunk,)

    def __init__(
        self,
        name: str = "asr",
        *,
        partial_ms: float = 500.0,
        max_utterance_s: float = 30.0,
        vad_end_ms: float = 350.0,
    ) -> None:
        super().__init__(name)
        self.partial_samples = int(partial_ms * RATE / 1000)
        self.max_utterance_s = max_utterance_s
        self.vad_end_ms = vad_end_ms
        self._asr: CT2Whisper | None = None
        self.conditioner = InputConditioner(RATE)
        self._vad: VadSegmenter | None = None
        self._audio = np.zeros(0, dtype=np.float32)  # 16 kHz: pre-roll, then the utterance
        self._audio_start = 0  # stream sample index of _audio[0]
        self._stream = 0  # 16 kHz samples seen
        self._turns = itertools.count(1)
        self._turn = ""
        self._next_partial = 0
        self._hypotheses: list[list[str]] = []
        self._committed: list[str] = []
        self._decoding: asyncio.Task[Recognition] | None = None
        # A final decoded speculatively from where the speaker went quiet: (end sample, task).
        self._speculation: tuple[int, asyncio.Task[Recognition]] | None = None

    @property
    def buffered_samples(self) -> int:
        """16 kHz audio held now: the pre-roll when idle, the utterance while someone speaks."""
        return len(self._audio)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._asr = await ctx.engines.resource("whisper-ct2-tiny.en", CT2Whisper)
        self._vad = await ctx.run_blocking(
            lambda: VadSegmenter(end_ms=self.vad_end_ms, max_utterance_s=self.max_utterance_s)
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._decoding, self._speculation[1] if self._speculation else None) if t]
        await cancel_and_wait(tasks, 2.0)

    @property
    def speaking(self) -> bool:
        return bool(self._vad and self._vad.speaking)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if not isinstance(frame, AudioChunk):
            yield frame
            return
        assert self._vad is not None
        audio = self.conditioner(frame)
        events = self._vad.feed(audio) if len(audio) else []
        self._audio = np.concatenate([self._audio, audio])
        self._stream += len(audio)
        for event in events:
            if event.kind == "start":
                self._begin(event.sample)
                yield SpeechStarted(utterance_id=self._turn)
            else:
                final = await self._finish(event.sample)
                if final is not None:
                    yield final
        if not self.speaking:
            # Idle: keep only the pre-roll before the earliest sample a next "start" may name (flat memory).
            keep = int(PRE_ROLL_S * RATE) + self._vad.lookback_samples
            self._audio, self._audio_start = self._audio[-keep:], self._stream - min(keep, len(self._audio))
            return
        self._speculate()
        partial = self._take_partial()
        if partial is not None:
            yield partial
        quiet = self._speculation is not None  # the final is being decoded: a partial would only delay it
        if (
            not quiet
            and self._stream >= self._next_partial
            and (self._decoding is None or self._decoding.done())
        ):
            self._next_partial = self._stream + self.partial_samples
            snapshot = self._utterance_audio(self._stream)
            self._decoding = asyncio.get_running_loop().create_task(
                self._recognize(snapshot, words=False), name=f"{self.name}:partial"
            )

    def _speculate(self) -> None:
        """Decode the final early, from the first quiet window; drop it if speech goes on."""
        assert self._vad is not None
        quiet_from = self._vad.silence_from
        if self._speculation is not None and self._speculation[0] != quiet_from:
            self._speculation[1].cancel()
            self._speculation = None
        if quiet_from is not None and self._speculation is None:
            audio = self._utterance_audio(quiet_from)
            task = asyncio.get_running_loop().create_task(
                self._recognize(audio, words=True), name=f"{self.name}:final"
            )
            self._speculation = (quiet_from, task)

    def _begin(self, sample: int) -> None:
        self._turn = f"{self.ctx.session_id}/viewer{next(self._turns)}"
        self._utterance_from = max(self._audio_start, sample - int(PRE_ROLL_S * RATE))
        self._next_partial = sample + self.partial_samples
        self._hypotheses, self._committed = [], []

    def _utterance_audio(self, end: int) -> npt.NDArray[np.float32]:
        lo = self._utterance_from - self._audio_start
        return self._audio[max(0, lo) : end - self._audio_start]

    async def _recognize(self, audio: npt.NDArray[np.float32], *, words: bool) -> Recognition:
        assert self._asr is not None
        asr = self._asr
        return await self.run_blocking(lambda: asr.recognize(audio, words=words))

    def _take_partial(self) -> Transcript | None:
        task = self._decoding
        if task is None or not task.done():
            return None
        self._decoding = None
        if task.cancelled() or task.exception() is not None:
            return None
        result = task.result()
        if result.is_hallucination():
            return None
        self._hypotheses = [*self._hypotheses[-1:], result.text.split()]
        if len(self._hypotheses) < 2:
            return None
        more = _extension(self._committed, _agreed(*self._hypotheses))
        if not more:
            return None
        self._committed = [*self._committed, *more]
        return Transcript(text=" ".join(self._committed), final=False, utterance_id=self._turn)

    async def _finish(self, end_sample: int) -> Transcript | None:
        if self._decoding is not None:
            await cancel_and_wait([self._decoding], 2.0)
            self._decoding = None
        speculation, self._speculation = self._speculation, None
        audio = self._utterance_audio(end_sample)
        if len(audio) < RATE // 4:
            if speculation is not None:
                await cancel_and_wait([speculation[1]], 2.0)
            return None
        if speculation is not None and speculation[0] == end_sample:
            result = await speculation[1]  # started when the speaker went quiet
        else:
            if speculation is not None:
                await cancel_and_wait([speculation[1]], 2.0)
            result = await self._recognize(audio, words=True)
        if result.is_hallucination():
            return None
        offset_ms = 1000 * self._utterance_from / RATE
        words = tuple(
            WordTiming(w.text, offset_ms + 1000 * w.start_s, offset_ms + 1000 * w.end_s) for w in result.words
        )
        return Transcript(
            text=result.text,
            final=True,
            start_ms=offset_ms,
            end_ms=1000 * end_sample / RATE,
            words=words,
            utterance_id=self._turn,
        )
