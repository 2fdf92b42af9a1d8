"""Releasing recorded audio at real-time pace, as a microphone would (tools, benchmarks, tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt

from anchor.core.frames import AudioChunk


class RealTimeClock:
    """Sample ``n`` is due ``n / rate`` seconds after the first ``until`` call."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.began: float | None = None

    def elapsed(self) -> float:
        """Seconds since the first sample was due (0 before it)."""
        return 0.0 if self.began is None else time.perf_counter() - self.began

    async def until(self, sample: int) -> None:
        """Wait until ``sample`` is due."""
        now = time.perf_counter()
        if self.began is None:
            self.began = now
        if (delay := self.began + sample / self.rate - now) > 0:
            await asyncio.sleep(delay)


async def paced_chunks(
    audio: npt.NDArray[np.float32], rate: int, *, chunk_ms: int = 20, clock: RealTimeClock | None = None
) -> AsyncIterator[AudioChunk]:
    """``audio`` as ``chunk_ms`` chunks, each released when its first sample is due on ``clock``."""
    clock = clock or RealTimeClock(rate)
    step = rate * chunk_ms // 1000
    for start in range(0, len(audio), step):
        await clock.until(start)
        yield AudioChunk(pcm=np.ascontiguousarray(audio[start : start + step]), sample_rate=rate, pts=start)
