"""A single-reader mailbox whose writer never waits.

The writer is the pacer or the session, which must never block on a slow
reader; the owner bounds the mailbox by dropping its oldest items.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def put(self, item: T) -> None:
        self.items.append(item)
        self._wake()

    async def get(self) -> T | None:
        """The oldest item; ``None`` once closed and empty."""
        while not self.items:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.items.popleft()

    def close(self) -> None:
        self.closed = True
        self._wake()
