"""The program to an MP4 file or an RTMP URL, from a paced feed (the same frames WebRTC viewers get).

Audio and video keep the media clock: both are placed by their program pts
relative to the first one received, so a dropped video frame leaves a gap in
time rather than pulling the rest forwards, and A/V stay locked. Encoding
and network writes run on one worker thread of their own, in order, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from anchor.core.aio import cancel_and_wait
from anchor.core.frames import AudioChunk, VideoFrame
from streams.mp4 import MediaWriter
from streams.tracks import ProgramFeed

log = logging.getLogger(__name__)
T = TypeVar("T")


class ProgramRecorder:
    """Writes ``feed`` to ``target`` (a path, or an ``rtmp://`` URL) until the feed ends or ``stop()``."""

    def __init__(
        self, feed: ProgramFeed, target: Path | str, *, width: int, height: int, fps: int, sample_rate: int
    ) -> None:
        self.feed = feed
        self.target = target
        self.size = (width, height)
        self.fps = fps
        self.sample_rate = sample_rate
        self.video_frames = 0
        self.audio_samples = 0
        self._origin: int | None = None
        self._writer: MediaWriter | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="recorder")
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the output (connects for RTMP) and start recording."""
        rtmp = isinstance(self.target, str) and self.target.startswith(("rtmp://", "rtmps://"))
        width, height = self.size
        self._writer = await self._off_loop(
            lambda: MediaWriter(
                self.target,
                width=width,
                height=height,
                fps=self.fps,
                sample_rate=self.sample_rate,
                format="flv" if rtmp else None,
            )
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._audio(), name=f"recorder:{self.target}:audio"),
            loop.create_task(self._video(), name=f"recorder:{self.target}:video"),
        ]

    async def _off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    def _place(self, pts: int) -> int:
        """Program pts -> samples since the recording's first frame."""
        if self._origin is None:
            self._origin = pts
        return pts - self._origin

    async def _audio(self) -> None:
        while (chunk := await self.feed.next_audio()) is not None:
            await self._write_audio(chunk)

    async def _video(self) -> None:
        while (frame := await self.feed.next_video()) is not None:
            await self._write_video(frame)

    async def _write_audio(self, chunk: AudioChunk) -> None:
        at = self._place(chunk.pts)
        writer = self._writer
        assert writer is not None
        if at + chunk.num_samples <= 0:
            return
        await self._off_loop(
            lambda: (
                writer.add_audio(chunk.pcm, at=max(at, 0))
                if at >= 0
                else writer.add_audio(chunk.pcm[-at:], at=0)
            )
        )
        self.audio_samples = at + chunk.num_samples

    async def _write_video(self, frame: VideoFrame) -> None:
        # Halves round down, never to even: video half a frame after the first audio chunk's pts would
        # otherwise land on 0, 2, 2, 4, 4, ... and every other frame be dropped as already covered.
        index = math.ceil(self._place(frame.pts) * self.fps / frame.sample_rate - 0.5)
        writer = self._writer
        assert writer is not None
        if index < 0 or index < self.video_frames:
            return  # before the recording began, or a frame already covered
        await self._off_loop(lambda: writer.add_video(frame.image, index))
        self.video_frames = index + 1

    async def drained(self) -> None:
        """Wait until the feed has ended and every frame it gave is written."""
        await asyncio.gather(*self._tasks)

    async def stop(self) -> None:
        """Stop recording, flush the encoders and close the file or stream."""
        await cancel_and_wait(self._tasks, 5.0)
        writer, self._writer = self._writer, None
        if writer is not None:
            await self._off_loop(writer.close)
        self._thread.shutdown(wait=True)
