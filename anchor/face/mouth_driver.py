"""The default face driver: each frame's mouth shape from the phonemes or the sound; the rig draws it.

Speech whose phonemes the voice sent ahead (``Phonemes`` frames: our
acoustic model's durations) is shaped by the visemes exactly
(``anchor.face.visemes``); speech without them (a viewer's microphone, a WAV
file, a voice that does not time its phonemes) by the mouth GAN, which was
trained to predict those same shapes from the sound. GAN frames of every
session go through the engine hub (``mouth-gan``), which batches them; the
rig's warp runs on a worker thread. A video avatar has a rig per frame,
used in a forwards-backwards loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from anchor.core.stage import StageContext
from anchor.face.face_stage import RATE, FaceTrack, Heard, looped
from anchor.face.mouth import MouthShape
from anchor.face.portrait import Image, Portrait
from anchor.face.rig import MouthRig
from anchor.face.visemes import TRANSPARENT, Effort, Timed, mouth_track, with_effort
from engines.face.mouth_gan import MAX_HISTORY_SAMPLES, MOUTH_GAN, frame_windows, lookahead_samples


class MouthGanDriver:
    history_samples = MAX_HISTORY_SAMPLES

    def __init__(self, *portraits: Portrait, engine: str = MOUTH_GAN) -> None:
        if not portraits:
            raise ValueError("MouthGanDriver needs at least one portrait")
        self.engine = engine
        self.portraits = portraits
        self.rigs: list[MouthRig] = []  # built by prepare(), off the event loop (~9 ms each)

    def lookahead_samples(self, fps: Fraction) -> int:
        return lookahead_samples(float(fps))

    async def prepare(self, ctx: StageContext) -> None:
        if not self.rigs:
            self.rigs = await ctx.run_blocking(lambda: [MouthRig(p) for p in self.portraits])
        await ctx.engines.prepare(self.engine)

    def track(self, fps: Fraction) -> FaceTrack:
        return _MouthGanTrack(self, fps)

    def draw(self, shapes: np.ndarray, first: int) -> list[Image]:
        """Frames ``first ..`` with ``shapes`` (``[N, 3]``: open, width, round)."""
        if not self.rigs:
            raise RuntimeError("MouthGanDriver.draw before prepare()")
        n = len(self.rigs)
        return [self.rigs[looped(first + k, n)].render(MouthShape.of(s)) for k, s in enumerate(shapes)]


class _MouthGanTrack:
    def __init__(self, driver: MouthGanDriver, fps: Fraction) -> None:
        self.driver = driver
        self.fps = fps
        self.phonemes: list[Timed] = []
        self._effort = Effort()
        self._next = 0  # the next frame to render

    def hear_phonemes(self, phonemes: Sequence[Timed]) -> None:
        self.phonemes.extend(p for p in phonemes if p.symbol not in TRANSPARENT)

    def _efforts(self, heard: Heard, first: int, count: int) -> npt.NDArray[np.float32]:
        if first != self._next:
            raise ValueError(f"mouth frames must come in order: asked for {first}, next is {self._next}")
        self._next += count
        step = RATE / self.fps
        spans = (heard.span(int(i * step), int((i + 1) * step)) for i in range(first, first + count))
        return np.array([self._effort.next(audio) for audio in spans], dtype=np.float32)

    async def render(self, ctx: StageContext, heard: Heard, first: int, count: int) -> list[Image]:
        d = self.driver
        fps = float(self.fps)
        times = (first + np.arange(count) + 0.5) / fps
        efforts = self._efforts(heard, first, count)
        # Frames from the first phoneme on follow the phonemes; any before (or all, without) the GAN.
        timed = times >= self.phonemes[0].start if self.phonemes else np.zeros(count, dtype=bool)
        shapes = np.zeros((count, 3), dtype=np.float32)
        if not timed.all():
            windows = await ctx.run_blocking(frame_windows, heard.audio, heard.start, first, count, fps)
            result = await ctx.infer(d.engine, {"audio": windows})
            shapes[:] = np.asarray(result["mouth"], dtype=np.float32)
        if timed.any():
            shapes[timed] = mouth_track(self.phonemes, times[timed])
        return await ctx.run_blocking(d.draw, with_effort(shapes, efforts), first)
