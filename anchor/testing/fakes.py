"""Fake stages with fault knobs, standing in for slow models in tests and benchmarks.

Knobs (``Faults``): an async latency before each output, blocking work on a
worker thread, and markers in the utterance text that make the stage raise
or hang on that utterance only. They produce real media with real pts, so
everything downstream of them is exercised for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from anchor.core.clock import samples_for_ms, video_frames_complete
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, Say, TextDelta, VideoFrame
from anchor.core.stage import Stage


class FakeStageError(RuntimeError):
    pass


@dataclass(frozen=True)
class Faults:
    latency_s: float = 0.0
    blocking_s: float = 0.0
    #: Extra wait before an utterance's first output only (a model with lookahead, a cold start).
    first_output_s: float = 0.0
    fail_marker: str | None = None
    hang_marker: str | None = None


class _Faulty(Stage):
    def __init__(
        self, name: str | None = None, *, faults: Faults = Faults(), timeout_s: float | None = None
    ) -> None:
        super().__init__(name, timeout_s=timeout_s)
        self.faults = faults
        self._fail: set[str] = set()
        self._hang: set[str] = set()
        self._started: set[str] = set()

    def note_text(self, frame: Frame, text: str) -> None:
        """An utterance whose text carries a marker fails (or hangs) in this stage."""
        f = self.faults
        if f.fail_marker and f.fail_marker in text:
            self._fail.add(frame.utterance_id)
        if f.hang_marker and f.hang_marker in text:
            self._hang.add(frame.utterance_id)

    async def before_output(self, frame: Frame) -> None:
        uid = frame.utterance_id
        if uid in self._hang:
            await asyncio.Event().wait()
        if uid in self._fail:
            raise FakeStageError(f"{self.name}: injected failure on {uid}")
        if self.faults.first_output_s and uid not in self._started:
            self._started.add(uid)
            await asyncio.sleep(self.faults.first_output_s)
        if self.faults.latency_s:
            await asyncio.sleep(self.faults.latency_s)
        if self.faults.blocking_s:
            await self.run_blocking(time.sleep, self.faults.blocking_s)

    def forget(self, utterance_ids: frozenset[str]) -> None:
        self._fail -= utterance_ids
        self._hang -= utterance_ids
        self._started -= utterance_ids

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        self.forget(utterance_ids)


class FakeResponder(_Faulty):
    """``Say`` -> one ``TextDelta`` per word, then ``EndOfUtterance``."""

    accepts = (Say,)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if not isinstance(frame, Say):
            yield frame
            return
        self.note_text(frame, frame.text)
        for word in frame.text.split():
            await self.before_output(frame)
            yield TextDelta(text=word + " ", utterance_id=frame.utterance_id)
        self.forget(frozenset({frame.utterance_id}))
        yield EndOfUtterance(utterance_id=frame.utterance_id)


class FakeTTS(_Faulty):
    """``TextDelta`` -> a tone ``ms_per_word`` long, pts continuous per utterance. A delta is one "word"
    (a streaming responder sends a word at a time); ``spoken_length`` makes the tone as long as the
    delta's words would take to say, for a whole sentence sent at once (the news desk's)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        sample_rate: int = 48000,
        ms_per_word: float = 120.0,
        faults: Faults = Faults(),
        timeout_s: float | None = None,
        spoken_length: bool = False,
    ) -> None:
        super().__init__(name, faults=faults, timeout_s=timeout_s)
        self.sample_rate = sample_rate
        self.samples_per_word = samples_for_ms(ms_per_word, sample_rate)
        self.spoken_length = spoken_length
        self._pts: dict[str, int] = {}

    def _tone(self, word: str, start: int) -> np.ndarray:
        n = self.samples_per_word * (max(1, len(word.split())) if self.spoken_length else 1)
        freq = 180.0 + 40.0 * (sum(map(ord, word)) % 8)
        t = (start + np.arange(n)) / self.sample_rate
        envelope = np.minimum(1.0, np.minimum(np.arange(n), n - np.arange(n)) / (0.01 * self.sample_rate))
        return (0.3 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, EndOfUtterance):
            self._pts.pop(uid, None)
            self.forget(frozenset({uid}))
            yield frame
            return
        if not isinstance(frame, TextDelta):
            yield frame
            return
        self.note_text(frame, frame.text)
        await self.before_output(frame)
        pts = self._pts.get(uid, 0)
        pcm = self._tone(frame.text.strip(), pts)
        self._pts[uid] = pts + len(pcm)
        yield AudioChunk(pcm=pcm, sample_rate=self.sample_rate, pts=pts, utterance_id=uid)

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        super().on_cancel(utterance_ids)
        for uid in utterance_ids:
            self._pts.pop(uid, None)


class FakeFace(_Faulty):
    """``AudioChunk`` -> ``VideoFrame``s: frame i once audio samples ``[i*sr/fps, (i+1)*sr/fps)`` arrived.

    The picture's brightness follows the audio level of the frame's span, so
    a test can check from pixels alone which audio a frame belongs to.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        fps: int = 25,
        size: tuple[int, int] = (64, 64),
        faults: Faults = Faults(),
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(name, faults=faults, timeout_s=timeout_s)
        self.fps = Fraction(fps)
        self.size = size
        self._audio: dict[str, list[np.ndarray]] = {}
        self._frames: dict[str, int] = {}
        self._sr: dict[str, int] = {}

    def _render(self, uid: str, index: int, level: float) -> VideoFrame:
        value = int(min(255, 40 + 400 * level))
        image = np.full((*self.size, 3), value, dtype=np.uint8)
        return VideoFrame(image=image, index=index, fps=self.fps, sample_rate=self._sr[uid], utterance_id=uid)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, EndOfUtterance):
            self._audio.pop(uid, None)
            self._frames.pop(uid, None)
            self._sr.pop(uid, None)
            yield frame
            return
        if not isinstance(frame, AudioChunk):
            yield frame
            return
        self._sr[uid] = frame.sample_rate
        parts = self._audio.setdefault(uid, [])
        parts.append(np.asarray(frame.pcm).reshape(-1))
        audio = np.concatenate(parts)
        self._audio[uid] = [audio]
        done = self._frames.get(uid, 0)
        total = video_frames_complete(frame.end_pts, frame.sample_rate, self.fps)
        base = frame.end_pts - len(audio)
        for index in range(done, total):
            await self.before_output(frame)
            lo = int(index * frame.sample_rate / self.fps) - base
            hi = int((index + 1) * frame.sample_rate / self.fps) - base
            span = audio[max(0, lo) : max(0, hi)]
            level = float(np.sqrt(np.mean(span**2))) if len(span) else 0.0
            yield self._render(uid, index, level)
        self._frames[uid] = total
        keep_from = int(total * frame.sample_rate / self.fps) - base
        self._audio[uid] = [audio[max(0, keep_from) :]]

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        super().on_cancel(utterance_ids)
        for uid in utterance_ids:
            self._audio.pop(uid, None)
            self._frames.pop(uid, None)
            self._sr.pop(uid, None)
