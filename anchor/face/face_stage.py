"""The face stage: speech ``AudioChunk``s in, one ``VideoFrame`` per video frame out.

Frame ``i`` shows the mouth for audio samples ``[i*sr/fps, (i+1)*sr/fps)`` of
its utterance, so its pts comes from the audio sample index, never from
wall time. A frame is rendered as soon as its audio and the driver's
lookahead have arrived (the animator: one frame, 40 ms at 25 fps; Wav2Lip:
its 16-mel-frame window, about 210 ms past the frame's start). At the end
of the utterance the rest is rendered against silence, up to the frame
holding the last sample.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import numpy as np
import numpy.typing as npt

from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, Phonemes, VideoFrame
from anchor.core.resample import StreamingResampler
from anchor.core.stage import Stage, StageContext
from anchor.face.animator import MouthTrack
from anchor.face.mouth import MouthShape
from anchor.face.portrait import Image
from anchor.face.rig import MouthRig
from anchor.face.visemes import Timed

RATE = 16000


@dataclass
class Heard:
    """An utterance's speech at 16 kHz: ``audio[k]`` is sample ``start + k``; older samples are dropped."""

    audio: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    start: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    def span(self, lo: int, hi: int) -> npt.NDArray[np.float32]:
        """Samples ``[lo, hi)``; what lies past the end reads as silence."""
        out = np.zeros(max(0, hi - lo), dtype=np.float32)
        a, b = max(lo, self.start), min(hi, self.end)
        if b > a:
            out[a - lo : b - lo] = self.audio[a - self.start : b - self.start]
        return out

    def forget_before(self, sample: int) -> None:
        drop = min(max(0, sample - self.start), len(self.audio))
        self.audio, self.start = self.audio[drop:], self.start + drop


class FaceTrack(Protocol):
    """One utterance's face, rendered in order."""

    def hear_phonemes(self, phonemes: Sequence[Timed]) -> None:
        """What the voice will say and when (seconds from the utterance's start); a track may ignore it."""
        ...

    async def render(self, ctx: StageContext, heard: Heard, first: int, count: int) -> list[Image]:
        """Pictures for frames ``first .. first+count``; their audio and lookahead are in ``heard``."""
        ...


class FaceDriver(Protocol):
    #: 16 kHz samples needed before a frame's first sample to render it.
    history_samples: int

    def lookahead_samples(self, fps: Fraction) -> int:
        """16 kHz samples needed past a frame's last sample to render it."""
        ...

    async def prepare(self, ctx: StageContext) -> None:
        """Load what rendering needs (models, engines) before the first utterance."""
        ...

    def track(self, fps: Fraction) -> FaceTrack: ...


@dataclass
class _Utterance:
    sample_rate: int
    resampler: StreamingResampler
    track: FaceTrack
    heard: Heard = field(default_factory=Heard)
    bus_samples: int = 0
    next_frame: int = 0


class FaceStage(Stage):
    accepts = (AudioChunk, EndOfUtterance)

    def __init__(self, driver: FaceDriver, name: str = "face", *, fps: int = 25, batch: int = 8) -> None:
        super().__init__(name)
        self.driver = driver
        self.fps = Fraction(fps)
        self.batch = batch
        self._lookahead = driver.lookahead_samples(self.fps)
        self._live: dict[str, _Utterance] = {}
        self._tracks: dict[str, FaceTrack] = {}  # made at an utterance's first frame of either kind

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        await self.driver.prepare(ctx)

    def _frame_bounds(self, index: int) -> tuple[int, int]:
        """16 kHz samples ``[lo, hi)`` of frame ``index``."""
        return int(index * RATE / self.fps), int((index + 1) * RATE / self.fps)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, Phonemes):
            track = self._tracks.setdefault(uid, self.driver.track(self.fps))
            rate = frame.sample_rate
            track.hear_phonemes(
                [
                    Timed(s, a / rate, b / rate)
                    for s, a, b in zip(frame.symbols, frame.bounds, frame.bounds[1:], strict=False)
                ]
            )
        elif isinstance(frame, AudioChunk):
            u = self._live.get(uid)
            if u is None:
                u = _Utterance(
                    frame.sample_rate,
                    StreamingResampler(frame.sample_rate, RATE),
                    self._tracks.setdefault(uid, self.driver.track(self.fps)),
                )
                self._live[uid] = u
            if frame.sample_rate != u.sample_rate:
                raise ValueError(
                    f"utterance {uid} changed rate mid-stream: {u.sample_rate} -> {frame.sample_rate} Hz"
                )
            u.bus_samples = max(u.bus_samples, frame.end_pts)
            pcm = await self.run_blocking(u.resampler.process, np.asarray(frame.pcm).reshape(-1))
            u.heard.audio = np.concatenate([u.heard.audio, pcm])
            ready = self._frames_ready(u)
            async for out in self._render(uid, u, ready):
                yield out
        elif isinstance(frame, EndOfUtterance):
            self._tracks.pop(uid, None)
            u = self._live.pop(uid, None)
            if u is not None:
                u.heard.audio = np.concatenate([u.heard.audio, u.resampler.flush()])
                total = math.ceil(u.bus_samples * self.fps / u.sample_rate)
                async for out in self._render(uid, u, total):
                    yield out
            yield frame
        else:
            yield frame

    def _frames_ready(self, u: _Utterance) -> int:
        """How many frames (from 0) have their audio and the driver's lookahead."""
        have = u.heard.end - self._lookahead
        return max(0, math.floor(have * self.fps / RATE))

    async def _render(self, uid: str, u: _Utterance, upto: int) -> AsyncGenerator[Frame, None]:
        while u.next_frame < upto:
            # The first frame alone: the voice waits for it at the edge, so it must come soon.
            count = 1 if u.next_frame == 0 else min(self.batch, upto - u.next_frame)
            images = await u.track.render(self.ctx, u.heard, u.next_frame, count)
            for k, image in enumerate(images):
                yield VideoFrame(
                    image=image,
                    index=u.next_frame + k,
                    fps=self.fps,
                    sample_rate=u.sample_rate,
                    utterance_id=uid,
                )
            u.next_frame += count
            u.heard.forget_before(self._frame_bounds(u.next_frame)[0] - self.driver.history_samples)

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        for uid in utterance_ids:
            self._live.pop(uid, None)
            self._tracks.pop(uid, None)


def looped(index: int, length: int) -> int:
    """Frame ``index`` of an avatar video of ``length`` frames played forwards, backwards, forwards, ..."""
    if length <= 1:
        return 0
    k = index % (2 * length - 2)
    return k if k < length else 2 * length - 2 - k


class AnimatorDriver:
    """The default driver: ``MouthTrack`` + ``MouthRig`` (no weights; see ``animator``).

    Several renderers (one per frame of a video avatar) are used in a
    forwards-backwards loop; an image avatar has one.
    """

    history_samples = 0

    def __init__(self, *renderers: MouthRig) -> None:
        if not renderers:
            raise ValueError("AnimatorDriver needs at least one MouthRig")
        self.renderers = renderers

    def lookahead_samples(self, fps: Fraction) -> int:
        return math.ceil(RATE / fps)  # the next frame (the 3-tap smoother)

    async def prepare(self, ctx: StageContext) -> None:
        return None

    def track(self, fps: Fraction) -> FaceTrack:
        return _AnimatorTrack(self.renderers, fps)


class _AnimatorTrack:
    def __init__(self, renderers: tuple[MouthRig, ...], fps: Fraction) -> None:
        self.renderers = renderers
        self.fps = fps
        self.mouth = MouthTrack()
        self._fed = 0  # frames whose audio the track has analysed
        self._drawn = 0

    def _bounds(self, index: int) -> tuple[int, int]:
        return int(index * RATE / self.fps), int((index + 1) * RATE / self.fps)

    def hear_phonemes(self, phonemes: Sequence[Timed]) -> None:
        return None  # the animator listens to the sound only

    def _draw(self, heard: Heard, first: int, count: int) -> list[Image]:
        if first != self._drawn:
            raise ValueError(f"animator frames must come in order: asked for {first}, next is {self._drawn}")
        shapes: list[MouthShape] = []
        while len(shapes) < count:
            shape = self.mouth.push(heard.span(*self._bounds(self._fed)))
            self._fed += 1
            if shape is not None:
                shapes.append(shape)
        self._drawn += count
        n = len(self.renderers)
        return [self.renderers[looped(first + k, n)].render(s) for k, s in enumerate(shapes)]

    async def render(self, ctx: StageContext, heard: Heard, first: int, count: int) -> list[Image]:
        return await ctx.run_blocking(self._draw, heard, first, count)
