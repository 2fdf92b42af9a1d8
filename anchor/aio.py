"""Task ownership: every task has an owner that awaits or cancels it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace_s: float) -> list[str]:
    """Cancel ``tasks`` and wait up to ``grace_s`` seconds; return the names that did not finish.

    A task that ignores cancellation is reported (and logged), not awaited
    forever: a hung model call must not hang shutdown.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=grace_s)
    stuck = [t.get_name() for t in pending if not t.done()]
    if stuck:
        log.error("tasks still running %.1fs after cancel: %s", grace_s, ", ".join(stuck))
    return stuck


class TaskOwner:
    """Owns a set of background tasks; failures are logged and reported, never lost."""

    def __init__(
        self, name: str, cancel_timeout: float, on_failure: Callable[[str, BaseException], None]
    ) -> None:
        self.name = name
        self._cancel_timeout = cancel_timeout
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"{self.name} is closed; cannot start {name}")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)
            self._on_failure(task.get_name(), exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> list[str]:
        """Cancel every owned task and wait for them (bounded by the cancel timeout)."""
        self._closed = True
        return await cancel_and_wait(list(self._tasks), self._cancel_timeout)
