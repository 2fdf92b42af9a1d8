"""The mel path's acoustic stage: text deltas -> Tacotron 2 mel chunks, as they are decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from anchor.speech.mel_tts import MelTTS
from anchor.speech.normalize import normalize
from anchor.stage import StageContext
from engines.models.tacotron2 import Tacotron2
from engines.voices.tacotron2 import load_tacotron2
from engines.voices.tacotron_text import text_to_ids


class Tacotron2TTS(MelTTS):
    """Phrases of streamed text -> ``MelChunk``s (22050 Hz, hop 256) for a vocoder stage."""

    def __init__(
        self,
        checkpoint: Path,
        name: str = "acoustic",
        *,
        chunk_frames: int = 20,
        gate_threshold: float = 0.5,
        max_decoder_steps: int = 1000,
    ) -> None:
        super().__init__(name)
        self.checkpoint = checkpoint
        self.chunk_frames = chunk_frames
        self.gate_threshold = gate_threshold
        self.max_decoder_steps = max_decoder_steps
        self._model: Tacotron2 | None = None

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        model = await ctx.run_blocking(load_tacotron2, self.checkpoint)
        model.config = replace(
            model.config, gate_threshold=self.gate_threshold, max_decoder_steps=self.max_decoder_steps
        )
        self._model = model

    async def _blocks(self, phrase: str) -> AsyncIterator[npt.NDArray[np.float32]]:
        assert self._model is not None
        ids = text_to_ids(normalize(phrase))
        if len(ids) < 2:
            return
        chunks: Iterator[torch.Tensor] = self._model.stream(torch.tensor([ids]), chunk=self.chunk_frames)
        while (mel := await self.run_blocking(next, chunks, None)) is not None:
            yield mel[0].numpy()
