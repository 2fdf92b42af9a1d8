"""The mel path with our own acoustic model: text deltas -> mel chunks as soon as durations are known.

Per phrase: normalise, phonemize with the Piper voice's own front end (the
model was distilled on its phoneme ids), run the encoder and duration
predictor once (the ``acoustic-encoder`` engine), then decode the mel
``chunk_frames`` at a time (the ``acoustic-decoder`` engine), each chunk in
a window with the decoder's receptive radius on either side, so it is
exactly what decoding the whole phrase would give. Both engines are shared by
every session in the process; decoder windows of one size batch across them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from anchor.core.stage import StageContext
from anchor.speech.mel_tts import MelTTS, Timing
from anchor.speech.normalize import normalize
from engines.models.fastspeech import AcousticConfig
from engines.registry import catalog
from engines.voices.acoustic_parts import acoustic_config, frames_of
from engines.voices.piper import JOE_MODEL, PiperVoice

ENCODER, DECODER = "acoustic-encoder", "acoustic-decoder"


class AcousticTTS(MelTTS):
    """Phrases of streamed text -> ``MelChunk``s (22050 Hz, hop 256, 80 log-mels) for a vocoder stage."""

    def __init__(
        self,
        name: str = "acoustic",
        *,
        chunk_frames: int = 24,
        length_scale: float = 1.0,
        first_words: int = 6,
    ) -> None:
        super().__init__(name, first_words=first_words)
        self.chunk_frames = chunk_frames
        self.length_scale = length_scale
        self.config = AcousticConfig()
        self._voice: PiperVoice | None = None

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        await ctx.engines.prepare(ENCODER)
        await ctx.engines.prepare(DECODER)
        engines = ctx.settings.engines
        self.config = await ctx.run_blocking(
            lambda: acoustic_config(catalog(engines)[DECODER].weights.resolve())
        )
        self._voice = await ctx.run_blocking(PiperVoice.for_model, JOE_MODEL.resolve())

    async def _chunks(self, expanded: npt.NDArray[np.float32]) -> AsyncIterator[npt.NDArray[np.float32]]:
        """The final mel of ``expanded[1, T, dim]``, ``chunk_frames`` at a time, each exact."""
        radius = self.config.receptive_radius()
        total = expanded.shape[1]
        for start in range(0, total, self.chunk_frames):
            end = min(total, start + self.chunk_frames)
            lo, hi = max(0, start - radius), min(total, end + radius)
            out = await self.ctx.infer(DECODER, {"expanded": np.ascontiguousarray(expanded[:, lo:hi])})
            yield np.asarray(out["mel"], dtype=np.float32)[0, :, start - lo : end - lo]

    async def _blocks(self, phrase: str) -> AsyncIterator[npt.NDArray[np.float32] | Timing]:
        voice = self._voice
        assert voice is not None
        text = normalize(phrase)
        if not any(ch.isalnum() for ch in text):
            return
        for ids in await self.run_blocking(voice.phoneme_ids, text):
            out = await self.ctx.infer(ENCODER, {"ids": np.asarray([ids], dtype=np.int64)})
            frames = frames_of(np.asarray(out["log_durations"])[0], self.config, self.length_scale)
            if not frames.sum():
                continue
            yield Timing(voice.symbols(ids), [int(f) for f in frames])
            expanded = np.repeat(np.asarray(out["hidden"], dtype=np.float32), frames, axis=1)
            async for mel in self._chunks(expanded):
                yield mel
