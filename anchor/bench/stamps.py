"""Frame numbers drawn into the program's pictures, so a receiver knows exactly which frame it got.

Two paths to the same viewer machine (direct, and through an SFU) each
renumber their RTP timestamps, so arrival times cannot be matched by them:
``StampedProgram`` draws each frame's program number (from its pts) as 16
black or white squares in the top-left corner, and ``read_stamp`` reads it
back from the decoded picture. Bench only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.core.frames import VideoFrame

BITS = 16
CELL = 16  # pixels per square: large enough to survive VP8 at bench bitrates


def stamp(image: npt.NDArray[np.uint8], number: int) -> npt.NDArray[np.uint8]:
    out = image.copy()
    for bit in range(BITS):
        row, col = divmod(bit, 4)
        out[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = 255 if number >> bit & 1 else 0
    return out


def read_stamp(gray: npt.NDArray[Any]) -> int:
    number = 0
    for bit in range(BITS):
        row, col = divmod(bit, 4)
        centre = gray[row * CELL + 4 : (row + 1) * CELL - 4, col * CELL + 4 : (col + 1) * CELL - 4]
        number |= int(float(centre.mean()) > 128) << bit
    return number


class _StampedFeed:
    def __init__(self, feed: Any) -> None:
        self.feed = feed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.feed, name)

    async def next_video(self) -> VideoFrame | None:
        frame: VideoFrame | None = await self.feed.next_video()
        if frame is None:
            return None
        number = round(frame.pts * frame.fps / frame.sample_rate) % 2**BITS
        return dataclasses.replace(frame, image=stamp(frame.image, number))


class StampedProgram:
    """A session whose every program copy (viewers, publisher) carries frame numbers in its pictures."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._feeds: dict[int, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def subscribe(self, *, audio_ms: float, video_frames: int) -> _StampedFeed:
        feed = self.session.subscribe(audio_ms=audio_ms, video_frames=video_frames)
        stamped = _StampedFeed(feed)
        self._feeds[id(stamped)] = feed
        return stamped

    def unsubscribe(self, feed: Any, /) -> None:
        self.session.unsubscribe(self._feeds.pop(id(feed), feed))
