"""Bounded channels between stages, bounded in milliseconds of media.

Overflow policy is stated per channel:

- ``Overflow.BLOCK``: ``put`` waits until the frame fits (audio back-pressures
  its producer).
- ``Overflow.DROP_OLDEST``: ``put`` never waits for media; the oldest
  droppable media frame is discarded and counted (video stays live rather
  than late).

A channel is always bounded twice: in ms of media and in item count (for
frames without duration, such as text). An empty channel accepts any single
frame so that one oversized chunk cannot deadlock a pipeline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from enum import Enum

from anchor.core.config import GraphSettings
from anchor.core.frames import Frame


class Overflow(Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


def _never(_frame: Frame) -> bool:
    return False


def _ignore(_frame: Frame) -> None:
    return None


class Channel:
    def __init__(
        self,
        name: str,
        *,
        capacity_ms: float,
        max_items: int,
        overflow: Overflow,
        is_stale: Callable[[Frame], bool] = _never,
        on_drop: Callable[[Frame], None] = _ignore,
        on_put: Callable[[], None] | None = None,
    ) -> None:
        if capacity_ms <= 0:
            raise ValueError(f"channel {name!r}: capacity_ms must be positive, got {capacity_ms}")
        if max_items < 1:
            raise ValueError(f"channel {name!r}: max_items must be >= 1, got {max_items}")
        self.name = name
        self.capacity_ms = capacity_ms
        self.max_items = max_items
        self.overflow = overflow
        self._is_stale = is_stale
        self._on_drop = on_drop
        self._on_put = on_put
        self._items: deque[Frame] = deque()
        self._buffered_ms = 0.0
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self.dropped = 0
        self.discarded_stale = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def buffered_ms(self) -> float:
        return self._buffered_ms

    def _fits(self, frame: Frame) -> bool:
        if not self._items:
            return True
        return len(self._items) < self.max_items and self._buffered_ms + frame.duration_ms <= self.capacity_ms

    def _drop_oldest_media(self) -> bool:
        for i, old in enumerate(self._items):
            if old.duration_ms > 0 and not old.uninterruptible:
                del self._items[i]
                self._buffered_ms -= old.duration_ms
                self.dropped += 1
                self._on_drop(old)
                return True
        return False

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    async def _wait(waiters: deque[asyncio.Future[None]]) -> None:
        waiter = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    async def put(self, frame: Frame) -> None:
        """Enqueue ``frame`` under the channel's overflow policy.

        Frames of a cancelled utterance are discarded here (also after waiting
        for space), so a stage that emits around an interrupt cannot leak
        stale media downstream.
        """
        if self.overflow is Overflow.DROP_OLDEST and frame.duration_ms > 0:
            while not self._fits(frame) and self._drop_oldest_media():
                pass
        while not self._is_stale(frame) and not self._fits(frame):
            await self._wait(self._putters)
        if self._is_stale(frame):
            self.discarded_stale += 1
            return
        self._items.append(frame)
        self._buffered_ms += frame.duration_ms
        self._wake(self._getters)
        if self._on_put is not None:
            self._on_put()

    async def get(self) -> Frame:
        while not self._items:
            await self._wait(self._getters)
        frame = self.get_nowait()
        assert frame is not None
        return frame

    def get_nowait(self) -> Frame | None:
        """The next frame if one is queued, else ``None``."""
        if not self._items:
            return None
        frame = self._items.popleft()
        self._buffered_ms = self._buffered_ms - frame.duration_ms if self._items else 0.0
        self._wake(self._putters)
        return frame

    def peek(self) -> Frame | None:
        return self._items[0] if self._items else None

    def holds(self, test: Callable[[Frame], bool]) -> bool:
        """Whether any queued frame passes ``test``."""
        return any(test(f) for f in self._items)

    def flush(self, should_drop: Callable[[Frame], bool]) -> int:
        """Remove every queued frame ``should_drop`` selects; wake blocked producers.

        Synchronous on purpose: an interrupt flushes every channel of a
        session without yielding to the event loop in between. Producers
        blocked on a stale frame wake, see it is stale, and return.
        """
        kept = deque(f for f in self._items if not should_drop(f))
        removed = len(self._items) - len(kept)
        self._items = kept
        self._buffered_ms = sum(f.duration_ms for f in kept)
        self._wake(self._putters)
        return removed


def media_channel(
    name: str,
    settings: GraphSettings,
    overflow: Overflow,
    *,
    is_stale: Callable[[Frame], bool],
    on_drop: Callable[[Frame], None],
    on_put: Callable[[], None] | None = None,
    video: bool = False,
) -> Channel:
    """A channel sized from the graph settings (audio or video budget)."""
    return Channel(
        name,
        capacity_ms=settings.video_channel_ms if video else settings.audio_channel_ms,
        max_items=settings.text_channel_items,
        overflow=overflow,
        is_stale=is_stale,
        on_drop=on_drop,
        on_put=on_put,
    )
