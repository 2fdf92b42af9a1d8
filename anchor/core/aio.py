"""Task ownership: every task has an owner that awaits or cancels it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], grace_s: float, *, again_every_s: float | None = None
) -> list[str]:
    """Cancel ``tasks`` and wait up to ``grace_s`` seconds; return the names that did not finish.

    A task that ignores cancellation is reported (and logged), not awaited
    forever: a hung model call must not hang shutdown. A task that failed
    rather than being cancelled is logged with its error. ``again_every_s``
    repeats the cancel while a task runs: on Python 3.11 ``asyncio.wait_for``
    (inside aiomqtt's publish, for one) swallows a cancel that lands as its
    inner call completes (fixed in 3.12). It is off by default, since a
    second cancel would also cut short a task's own clean-up.
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while (pending := [t for t in tasks if not t.done()]) and (left := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=left if again_every_s is None else min(left, again_every_s))
        if again_every_s is None:
            break
    for task in tasks:
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("%s failed: %r", task.get_name(), exc)
    stuck = [t.get_name() for t in tasks if not t.done()]
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
