"""One loaded copy of each engine per process, shared by every session, micro-batched.

Requests for the same engine and the same non-batch shapes that arrive
within ``max_wait_ms`` of the first are joined along the batch axis (up to
``max_batch``), run once on the engine's own worker thread, and split back,
so each caller gets exactly its own rows. When a batch fails, its requests
run again one by one: a bad request fails only its own caller.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt

from engines.settings import EngineSettings
from engines.spec import Arrays, EngineSpec
from engines.threads import shutdown_executor

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runnable(Protocol):
    """What the hub needs of an engine (``engines.engine.Engine`` or a test double)."""

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays: ...

    def close(self) -> None: ...


_BATCHES_KEPT = 1000


class HubClosed(RuntimeError):
    pass


@dataclass
class _Request:
    inputs: Mapping[str, npt.NDArray[np.generic]]
    rows: int
    signature: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Arrays] = field(repr=False)


class Batcher:
    """Loads one engine on its own worker thread, then forms and runs its micro-batches."""

    def __init__(
        self, spec: EngineSpec, settings: EngineSettings, on_batch: Callable[[str, int], None] | None = None
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.max_batch = min(settings.max_batch, spec.axes[spec.batch_axis].max) if spec.batchable else 1
        self.max_wait_s = settings.max_wait_ms / 1000
        self.max_pending = settings.max_pending
        self.engine: Runnable | None = None
        self._queue: deque[_Request] = deque()
        self._arrived = asyncio.Event()
        self._space = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{spec.name}")
        self._task: asyncio.Task[None] | None = None
        # Rows per batch run, the latest few (a list would grow for as long as the process runs).
        self.batches: deque[int] = deque(maxlen=_BATCHES_KEPT)
        self._on_batch = on_batch
        self.warm = False

    async def open(self, opener: Callable[[EngineSpec], Runnable]) -> None:
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self._thread, opener, self.spec)
        self._task = loop.create_task(self._loop(), name=f"hub:{self.name}")

    def _run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        assert self.engine is not None
        return self.engine.run(inputs)

    async def submit(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        self.spec.check_inputs(inputs)  # a malformed request fails here, alone
        while len(self._queue) >= self.max_pending:
            self._space.clear()
            await self._space.wait()
        first = self.spec.inputs[0].name
        signature = tuple((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in sorted(inputs.items()))
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(inputs, int(inputs[first].shape[0]), signature, future))
        self._arrived.set()
        return await future

    def _take(self) -> list[_Request]:
        """The oldest request and every later one of the same shapes that still fits."""
        head = self._queue[0]
        batch: list[_Request] = []
        rest: deque[_Request] = deque()
        rows = 0
        while self._queue:
            req = self._queue.popleft()
            if req.future.done():
                continue  # its caller was cancelled
            if req.signature == head.signature and (not batch or rows + req.rows <= self.max_batch):
                batch.append(req)
                rows += req.rows
            else:
                rest.append(req)
        self._queue = rest
        self._space.set()
        return batch

    def _ready_rows(self) -> int:
        head = self._queue[0].signature
        return sum(r.rows for r in self._queue if r.signature == head and not r.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while self._ready_rows() < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(r.rows for r in batch)
        self.batches.append(rows)
        if self._on_batch is not None:
            self._on_batch(self.name, rows)
        try:
            if len(batch) == 1:
                outputs = [await loop.run_in_executor(self._thread, self._run, batch[0].inputs)]
            else:
                joined = {k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs}
                result = await loop.run_in_executor(self._thread, self._run, joined)
                outputs = _split(result, [r.rows for r in batch])
        except Exception as exc:  # noqa: BLE001 - any model failure: find the request(s) it belongs to
            if len(batch) == 1:
                _resolve(batch[0].future, exc)
                return
            log.warning("engine %s: batch of %d failed (%s); retrying one by one", self.name, len(batch), exc)
            for req in batch:
                await self._execute([req])
            return
        for req, out in zip(batch, outputs, strict=True):
            _resolve(req.future, out)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for req in self._queue:
            _resolve(req.future, HubClosed(f"engine {self.name} closed"))
        self._queue.clear()
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.close)
        await shutdown_executor(self._thread)


class EngineHub:
    """The process's engines: loaded on first use, once, and shared by every caller."""

    def __init__(
        self,
        settings: EngineSettings,
        specs: Mapping[str, EngineSpec],
        opener: Callable[[EngineSpec], Runnable],
        *,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_batch(engine, rows)`` is called after each batch is formed (for metrics)."""
        self.settings = settings
        self._on_batch = on_batch
        self.specs = dict(specs)
        self._opener = opener
        self._batchers: dict[str, Batcher] = {}
        self._opening: dict[str, asyncio.Task[Batcher]] = {}
        self._resources: dict[str, asyncio.Task[object]] = {}
        self._closed = False

    async def batcher(self, name: str) -> Batcher:
        """The engine's batcher, loading the engine the first time (concurrent callers share it)."""
        if self._closed:
            raise HubClosed("the engine hub is closed")
        if name in self._batchers:
            return self._batchers[name]
        if name not in self.specs:
            raise KeyError(f"unknown engine {name!r}; known: {sorted(self.specs)}")
        task = self._opening.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(name), name=f"hub:open:{name}")
            self._opening[name] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._opening.pop(name, None)

    async def _open(self, name: str) -> Batcher:
        batcher = Batcher(self.specs[name], self.settings, self._on_batch)
        try:
            await batcher.open(self._opener)
        except BaseException:
            await batcher.aclose()
            raise
        self._batchers[name] = batcher
        return batcher

    async def prepare(self, name: str) -> None:
        """Load engine ``name`` and run it once on sample inputs, before the first real request."""
        batcher = await self.batcher(name)
        if not batcher.warm:
            batcher.warm = True
            await batcher.submit(self.specs[name].sample_inputs("opt"))

    async def infer(self, name: str, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        """Run ``inputs`` (with a leading batch axis) through engine ``name``; batched with others."""
        return await (await self.batcher(name)).submit(inputs)

    async def resource(self, name: str, factory: Callable[[], T]) -> T:
        """A process-wide object (a model the hub does not batch) built once, off the event loop.

        Concurrent first callers share one build; ``close()`` is called on it when the hub closes.
        """
        if self._closed:
            raise HubClosed("the engine hub is closed")
        task = self._resources.get(name)
        if task is None:
            loop = asyncio.get_running_loop()
            task = loop.create_task(_build(factory), name=f"hub:resource:{name}")
            self._resources[name] = cast("asyncio.Task[object]", task)
        return cast(T, await asyncio.shield(task))

    def loaded(self) -> dict[str, Runnable]:
        return {name: b.engine for name, b in self._batchers.items() if b.engine is not None}

    async def aclose(self) -> None:
        self._closed = True
        for resource in self._resources.values():
            if resource.done() and not resource.cancelled() and resource.exception() is None:
                close = getattr(resource.result(), "close", None)
                if callable(close):
                    close()
            else:
                resource.cancel()
        await asyncio.gather(*self._resources.values(), return_exceptions=True)
        self._resources.clear()
        for task in self._opening.values():
            task.cancel()
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        for batcher in self._batchers.values():
            await batcher.aclose()
        self._batchers.clear()

    async def __aenter__(self) -> EngineHub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _build(factory: Callable[[], T]) -> T:
    """Run a blocking constructor on a short-lived thread (the loop's default pool stays unused)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if done.done():
            return
        if ok:
            done.set_result(cast(T, value))
        else:
            done.set_exception(cast(BaseException, value))

    def work() -> None:
        try:
            value: object = factory()
            ok = True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
            value, ok = exc, False
        loop.call_soon_threadsafe(settle, ok, value)

    thread = threading.Thread(target=work, name="hub-resource-build", daemon=True)
    thread.start()
    value = await done  # if cancelled, the daemon thread finishes on its own; never join it here
    thread.join()  # its last step was resolving ``done``: returns at once
    return value


def _split(result: Arrays, rows: list[int]) -> list[Arrays]:
    bounds = np.cumsum([0, *rows]).tolist()
    return [{k: v[a:b] for k, v in result.items()} for a, b in itertools.pairwise(bounds)]


def _resolve(future: asyncio.Future[Arrays], value: Arrays | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
