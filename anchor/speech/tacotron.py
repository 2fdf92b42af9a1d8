"""The mel path's acoustic stage: text deltas -> Tacotron 2 mel chunks, as they are decoded."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from anchor.frames import EndOfUtterance, Frame, MelChunk, TextDelta
from anchor.speech.normalize import normalize
from anchor.speech.phrases import PhraseSplitter
from anchor.stage import Stage, StageContext
from engines.models.tacotron2 import Tacotron2
from engines.voices.tacotron2 import load_tacotron2
from engines.voices.tacotron_text import text_to_ids


class Tacotron2TTS(Stage):
    """Phrases of streamed text -> ``MelChunk``s (22050 Hz, hop 256) for a vocoder stage."""

    accepts = (TextDelta,)

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
        self._splitters: dict[str, PhraseSplitter] = {}
        self._pts: dict[str, int] = {}

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        model = await ctx.run_blocking(load_tacotron2, self.checkpoint)
        model.config = replace(
            model.config, gate_threshold=self.gate_threshold, max_decoder_steps=self.max_decoder_steps
        )
        self._model = model

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, TextDelta):
            splitter = self._splitters.setdefault(uid, PhraseSplitter())
            for phrase in splitter.feed(frame.text):
                async for mel in self._speak(uid, phrase):
                    yield mel
        elif isinstance(frame, EndOfUtterance):
            ending = self._splitters.pop(uid, None)
            for phrase in ending.flush() if ending else []:
                async for mel in self._speak(uid, phrase):
                    yield mel
            self._pts.pop(uid, None)
            yield frame
        else:
            yield frame

    async def _speak(self, uid: str, phrase: str) -> AsyncGenerator[MelChunk, None]:
        assert self._model is not None
        ids = text_to_ids(normalize(phrase))
        if len(ids) < 2:
            return
        chunks: Iterator[torch.Tensor] = self._model.stream(torch.tensor([ids]), chunk=self.chunk_frames)
        while (mel := await self.run_blocking(next, chunks, None)) is not None:
            pts = self._pts.get(uid, 0)
            block = np.ascontiguousarray(mel[0].numpy(), dtype=np.float32)
            self._pts[uid] = pts + block.shape[1] * 256
            yield MelChunk(mel=block, sample_rate=22050, hop_length=256, pts=pts, utterance_id=uid)

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        for uid in utterance_ids:
            self._splitters.pop(uid, None)
            self._pts.pop(uid, None)
