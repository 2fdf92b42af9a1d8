"""The mel path's acoustic stage with Tacotron 2: text deltas -> mel chunks, as they are decoded.

Runs NVIDIA's Tacotron 2 as three shared engines (``engines/voices/tacotron2_parts.py``):
the encoder once per phrase, one decoder step per mel frame (the recurrent
state travels in and out of each call, so sessions never share it), and the
postnet over each chunk with ``POSTNET_CONTEXT`` frames either side, which
equals the postnet over the whole phrase. The weights are the ``tacotron2``
engines' setting (``anchor say --voice mel --checkpoint T2.pt``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from anchor.core.stage import StageContext
from anchor.speech.mel_tts import MelTTS
from anchor.speech.normalize import normalize
from engines.models.tacotron2 import POSTNET_CONTEXT
from engines.voices.tacotron2_parts import STATE
from engines.voices.tacotron_text import text_to_ids

ENCODER, STEP, POSTNET = "tacotron2-encoder", "tacotron2-decoder-step", "tacotron2-postnet"


class Tacotron2TTS(MelTTS):
    """Phrases of streamed text -> ``MelChunk``s (22050 Hz, hop 256) for a vocoder stage."""

    def __init__(
        self,
        name: str = "acoustic",
        *,
        chunk_frames: int = 20,
        gate_threshold: float = 0.5,
        max_decoder_steps: int = 1000,
    ) -> None:
        super().__init__(name)
        self.chunk_frames = chunk_frames
        self.gate_threshold = gate_threshold
        self.max_decoder_steps = max_decoder_steps

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        for engine in (ENCODER, STEP, POSTNET):
            await ctx.engines.prepare(engine)

    async def _refine(
        self, frames: list[npt.NDArray[np.float32]], start: int, end: int
    ) -> npt.NDArray[np.float32]:
        lo, hi = max(0, start - POSTNET_CONTEXT), min(len(frames), end + POSTNET_CONTEXT)
        mel = np.stack(frames[lo:hi], -1)[None]
        out = await self.ctx.infer(POSTNET, {"mel": np.ascontiguousarray(mel, dtype=np.float32)})
        return np.asarray(out["refined"], dtype=np.float32)[0, :, start - lo : end - lo]

    async def _blocks(self, phrase: str) -> AsyncIterator[npt.NDArray[np.float32]]:
        ids = text_to_ids(normalize(phrase))
        if len(ids) < 2:
            return
        memory = await self.ctx.infer(ENCODER, {"ids": np.asarray([ids], dtype=np.int64)})
        state = {
            name: np.zeros((1, len(ids) if size == "tokens" else int(size)), dtype=np.float32)
            for name, size in STATE
        }
        frame = np.zeros((1, 80), dtype=np.float32)
        frames: list[npt.NDArray[np.float32]] = []
        done = 0
        for _ in range(self.max_decoder_steps):
            out = await self.ctx.infer(STEP, {"frame": frame, **state, **memory})
            frame = np.asarray(out["mel"], dtype=np.float32)
            state = {name: np.asarray(out[f"new_{name}"], dtype=np.float32) for name, _ in STATE}
            frames.append(frame[0])
            if len(frames) - done >= self.chunk_frames + POSTNET_CONTEXT:
                yield await self._refine(frames, done, done + self.chunk_frames)
                done += self.chunk_frames
            gate = float(np.asarray(out["gate"]).reshape(-1)[0])
            if 1 / (1 + np.exp(-gate)) > self.gate_threshold:
                break
        if len(frames) > done:
            yield await self._refine(frames, done, len(frames))
