"""The mel path with our own acoustic model: text deltas -> mel chunks as soon as durations are known.

Per phrase: normalise, phonemize with the Piper voice's own front end (the
model was distilled on its phoneme ids), run the encoder and duration
predictor once, then decode the mel ``chunk_frames`` at a time; each chunk
is exactly what decoding the whole phrase would give (see ``FastSpeech.decode_chunks``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from anchor.speech.mel_tts import MelTTS, Timing
from anchor.speech.normalize import normalize
from anchor.stage import StageContext
from engines.models.fastspeech import FastSpeech
from engines.voices.acoustic import ACOUSTIC_WEIGHTS, load_acoustic
from engines.voices.piper import JOE_MODEL, PiperVoice


class AcousticTTS(MelTTS):
    """Phrases of streamed text -> ``MelChunk``s (22050 Hz, hop 256, 80 log-mels) for a vocoder stage."""

    def __init__(
        self,
        checkpoint: Path | None = None,
        name: str = "acoustic",
        *,
        chunk_frames: int = 24,
        length_scale: float = 1.0,
        first_words: int = 6,
    ) -> None:
        super().__init__(name, first_words=first_words)
        self.checkpoint = checkpoint
        self.chunk_frames = chunk_frames
        self.length_scale = length_scale
        self._model: FastSpeech | None = None
        self._voice: PiperVoice | None = None

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._model = await ctx.run_blocking(load_acoustic, self.checkpoint or ACOUSTIC_WEIGHTS.resolve())
        self._voice = await ctx.run_blocking(PiperVoice.for_model, JOE_MODEL.resolve())

    def _chunks(self, ids: list[int]) -> tuple[list[int], Iterator[torch.Tensor]]:
        """Mel frames per phoneme id, and the decoder's chunks."""
        assert self._model is not None
        with torch.inference_mode():
            hidden, log_durations = self._model.encode(torch.tensor([ids]))
            frames = self._model.frames_of(log_durations[0], self.length_scale)
            expanded = torch.repeat_interleave(hidden, frames, dim=1)
        return [int(f) for f in frames], self._model.decode_chunks(expanded, self.chunk_frames)

    async def _blocks(self, phrase: str) -> AsyncIterator[npt.NDArray[np.float32] | Timing]:
        voice = self._voice
        assert voice is not None
        text = normalize(phrase)
        if not any(ch.isalnum() for ch in text):
            return
        for ids in await self.run_blocking(voice.phoneme_ids, text):
            frames, chunks = await self.run_blocking(self._chunks, ids)
            yield Timing(voice.symbols(ids), frames)
            while (mel := await self.run_blocking(next, chunks, None)) is not None:
                yield mel[0].numpy()
