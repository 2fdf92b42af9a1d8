"""The stage API: what a processing step of the graph implements.

A stage turns each input frame into zero or more output frames by
``process`` (an async generator). The graph runs it: one frame at a time,
outputs in order, each output bounded by the stage's timeout, the in-flight
work cancelled when its utterance is interrupted. Blocking calls (model
inference) go through ``run_blocking`` so the event loop never stalls.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from anchor.core.channel import Overflow
from anchor.core.config import AnchorSettings
from anchor.core.frames import Frame

T = TypeVar("T")


class Inference(Protocol):
    """The engine hub as stages see it: named engines, arrays in, arrays out."""

    async def prepare(self, name: str) -> None: ...

    async def resource(self, name: str, factory: Callable[[], T]) -> T: ...

    async def infer(
        self, name: str, inputs: Mapping[str, npt.NDArray[np.generic]]
    ) -> dict[str, npt.NDArray[np.generic]]: ...


@dataclass(frozen=True)
class StageContext:
    """What a running stage may use from its session."""

    session_id: str
    settings: AnchorSettings
    executor: Executor
    engines: Inference

    async def infer(
        self, name: str, inputs: Mapping[str, npt.NDArray[np.generic]]
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Run engine ``name`` through the process's shared, micro-batching hub."""
        return await self.engines.infer(name, inputs)

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the runtime's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args))


class Stage:
    """Base class; the default ``process`` forwards every frame unchanged."""

    #: Inbox overflow: audio-consuming stages block their producer; a stage
    #: fed with video should drop the oldest frame instead.
    inbox_overflow: Overflow = Overflow.BLOCK
    #: Session input (``Session.push``) reaches a root stage only if it is one of these.
    accepts: tuple[type[Frame], ...] = (Frame,)

    def __init__(self, name: str | None = None, *, timeout_s: float | None = None) -> None:
        self.name = name or type(self).__name__
        self.timeout_s = timeout_s
        self._ctx: StageContext | None = None

    @property
    def ctx(self) -> StageContext:
        if self._ctx is None:
            raise RuntimeError(f"stage {self.name} is not running in a session")
        return self._ctx

    async def start(self, ctx: StageContext) -> None:
        """Called once before the first frame; load per-session state here."""
        self._ctx = ctx

    async def stop(self) -> None:
        """Called once when the session closes."""

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        yield frame

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        """Drop any per-utterance state for ``utterance_ids`` (interrupt or error)."""

    async def run_blocking(self, fn: Callable[..., T], *args: object) -> T:
        return await self.ctx.run_blocking(fn, *args)
