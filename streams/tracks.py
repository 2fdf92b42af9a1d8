"""aiortc media tracks over a paced program feed, and the viewer microphone back into a session.

The program feed is already paced by the session's output pacer (the one
place that sleeps), so ``recv`` only waits for the next released frame;
pts come from the media clock (audio sample counts), never from wall time.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from anchor.core.frames import AudioChunk, VideoFrame

log = logging.getLogger(__name__)


class ProgramFeed(Protocol):
    """One viewer's copy of a session's paced output."""

    dropped_video: int  # frames this viewer's encoder fell too far behind to send

    async def next_audio(self) -> AudioChunk | None: ...

    async def next_video(self) -> VideoFrame | None: ...


class ProgramAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, feed: ProgramFeed) -> None:
        super().__init__()
        self.feed = feed

    async def recv(self) -> av.AudioFrame:
        chunk = await self.feed.next_audio()
        if chunk is None:
            self.stop()
            raise MediaStreamError
        pcm = (np.clip(np.asarray(chunk.pcm, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = chunk.sample_rate
        frame.pts = chunk.pts
        frame.time_base = Fraction(1, chunk.sample_rate)
        return frame


class ProgramVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, feed: ProgramFeed) -> None:
        super().__init__()
        self.feed = feed

    async def recv(self) -> av.VideoFrame:
        frame = await self.feed.next_video()
        if frame is None:
            self.stop()
            raise MediaStreamError
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame.image), format="rgb24")
        out.pts = frame.pts
        out.time_base = Fraction(1, frame.sample_rate)
        return out


def chunk_of(frame: av.AudioFrame, pts: int) -> AudioChunk:
    """A received WebRTC audio frame (s16, mono or interleaved stereo) as a mono float ``AudioChunk``."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.reshape(channels, -1).astype(np.float32).mean(axis=0)
    else:
        samples = data.reshape(-1, channels).astype(np.float32).mean(axis=1)
    scale = 32768.0 if data.dtype == np.int16 else 1.0
    return AudioChunk(pcm=samples / scale, sample_rate=frame.sample_rate, pts=pts)


async def pump_microphone(track: MediaStreamTrack, push: Callable[[AudioChunk], Awaitable[None]]) -> None:
    """Feed a viewer's microphone into ``push`` until the track ends (pts count the samples received)."""
    pts = 0
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        chunk = chunk_of(frame, pts)
        pts = chunk.end_pts
        try:
            await push(chunk)
        except ValueError as exc:  # the session takes no audio (or not this audio): stop listening
            log.warning("viewer microphone ignored: %s", exc)
            return
