"""Stages connected by bounded channels, and the machinery that runs them.

``Graph`` is the description a session is built from: stages, links and the
two output ports (``AUDIO_OUT``, ``VIDEO_OUT``) of the paced edge. ``GraphRun``
runs one description for one session.

Cancellation (interrupt or error) is a direct, synchronous walk over the
stages in topological order: mark the utterances stale, cancel the in-flight
work that belongs to them, flush their frames from every inbox. Nothing of
it waits behind queued media; this is the control lane.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from typing import Final

from anchor.core.aio import TaskOwner, cancel_and_wait
from anchor.core.channel import Channel, Overflow, media_channel
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, ErrorEvent, Frame, VideoFrame
from anchor.core.stage import Stage, StageContext

log = logging.getLogger(__name__)


class StageTimeout(TimeoutError):
    pass


@dataclass(frozen=True, slots=True)
class OutputPort:
    name: str
    kinds: tuple[type[Frame], ...]


AUDIO_OUT: Final = OutputPort("audio_out", (AudioChunk, EndOfUtterance))
VIDEO_OUT: Final = OutputPort("video_out", (VideoFrame,))

Target = Stage | OutputPort


@dataclass(frozen=True, slots=True)
class Link:
    src: Stage
    dst: Target
    kinds: tuple[type[Frame], ...] | None


class Graph:
    """A description of stages and links; build one per session."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self.links: list[Link] = []

    def add(self, *stages: Stage) -> Graph:
        for stage in stages:
            if any(s is stage for s in self.stages):
                raise ValueError(f"stage {stage.name} added twice")
            if any(s.name == stage.name for s in self.stages):
                raise ValueError(f"two stages are named {stage.name!r}; names must be unique")
            self.stages.append(stage)
        return self

    def link(self, src: Stage, dst: Target, *, kinds: tuple[type[Frame], ...] | None = None) -> Graph:
        """Send ``src``'s outputs (only ``kinds``, when given) to ``dst``."""
        for end in (src, dst):
            if isinstance(end, Stage) and not any(s is end for s in self.stages):
                raise ValueError(f"stage {end.name} must be added before it is linked")
        self.links.append(Link(src, dst, kinds))
        return self

    def chain(self, *stages: Stage) -> Graph:
        """Add ``stages`` (if new) and link each to the next."""
        for stage in stages:
            if not any(s is stage for s in self.stages):
                self.add(stage)
        for a, b in itertools.pairwise(stages):
            self.link(a, b)
        return self

    def roots(self) -> list[Stage]:
        fed = {id(link.dst) for link in self.links}
        return [s for s in self.stages if id(s) not in fed]

    def topological(self) -> list[Stage]:
        order: list[Stage] = []
        indegree = {id(s): 0 for s in self.stages}
        for link in self.links:
            if isinstance(link.dst, Stage):
                indegree[id(link.dst)] += 1
        ready = [s for s in self.stages if indegree[id(s)] == 0]
        while ready:
            stage = ready.pop(0)
            order.append(stage)
            for link in self.links:
                if link.src is stage and isinstance(link.dst, Stage):
                    indegree[id(link.dst)] -= 1
                    if indegree[id(link.dst)] == 0:
                        ready.append(link.dst)
        if len(order) != len(self.stages):
            raise ValueError("the graph has a cycle")
        return order


@dataclass(frozen=True, slots=True)
class Hooks:
    """What a running graph reports to its session."""

    is_stale: Callable[[Frame], bool]
    on_emit: Callable[[Frame], None]
    on_control: Callable[[Frame], None]
    on_stage_time: Callable[[str, float], None]
    on_drop: Callable[[str, Frame], None]


class StageRunner:
    """Runs one stage: its inbox, its in-flight work, its outputs."""

    def __init__(self, stage: Stage, settings: AnchorSettings, hooks: Hooks) -> None:
        self.stage = stage
        self.hooks = hooks
        self.timeout_s = stage.timeout_s or settings.graph.stage_timeout_s
        self.cancel_grace_s = settings.graph.cancel_timeout_s
        self.inbox = media_channel(
            f"{stage.name}.inbox",
            settings.graph,
            stage.inbox_overflow,
            is_stale=hooks.is_stale,
            on_drop=lambda f: hooks.on_drop(stage.name, f),
            video=stage.inbox_overflow is Overflow.DROP_OLDEST,
        )
        self.outputs: list[tuple[Callable[[Frame], Channel | None], tuple[type[Frame], ...] | None]] = []
        self._work: asyncio.Task[None] | None = None
        self._work_frame: Frame | None = None

    @property
    def working_on(self) -> str | None:
        """The utterance whose frame the stage is working on now, if any."""
        work, frame = self._work, self._work_frame
        return None if work is None or work.done() or frame is None else frame.utterance_id

    async def loop(self) -> None:
        while True:
            frame = await self.inbox.get()
            if self.hooks.is_stale(frame):
                continue
            work = asyncio.get_running_loop().create_task(self._handle(frame), name=f"{self.stage.name}:work")
            self._work, self._work_frame = work, frame
            try:
                await work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    await cancel_and_wait([work], self.cancel_grace_s)
                    raise
                # Only the work was cancelled (its utterance was): keep serving.
            finally:
                self._work, self._work_frame = None, None

    async def _handle(self, frame: Frame) -> None:
        outputs: AsyncGenerator[Frame, None] = self.stage.process(frame)
        busy = 0.0
        try:
            while True:
                began = time.perf_counter()
                try:
                    async with asyncio.timeout(self.timeout_s):
                        out = await anext(outputs)
                except StopAsyncIteration:
                    busy += time.perf_counter() - began
                    break
                except TimeoutError:
                    raise StageTimeout(
                        f"stage {self.stage.name} produced nothing for {self.timeout_s:g} s"
                    ) from None
                busy += time.perf_counter() - began
                await self._emit(out, frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stage boundary: any model failure ends one utterance only
            self.hooks.on_control(
                ErrorEvent(
                    utterance_id=frame.utterance_id,
                    stage=self.stage.name,
                    message=f"{type(exc).__name__}: {exc}",
                    trace=frame.stamps,
                )
            )
        finally:
            await outputs.aclose()
        self.hooks.on_stage_time(self.stage.name, busy)

    async def _emit(self, out: Frame, source: Frame) -> None:
        if source.uninterruptible and not out.uninterruptible and out.utterance_id == source.utterance_id:
            out = replace(out, uninterruptible=True)
        out = out.stamped(self.stage.name)
        if out.system:
            self.hooks.on_control(out)
            return
        self.hooks.on_emit(out)
        for route, kinds in self.outputs:
            if kinds is not None and not isinstance(out, kinds):
                continue
            channel = route(out)
            if channel is not None:
                await channel.put(out)

    def cancel(self, utterance_ids: frozenset[str]) -> asyncio.Task[None] | None:
        """Flush ``utterance_ids`` from the inbox and cancel matching in-flight work."""
        self.inbox.flush(lambda f: f.utterance_id in utterance_ids and not f.uninterruptible)
        self.stage.on_cancel(utterance_ids)
        frame, work = self._work_frame, self._work
        if (
            work is not None
            and frame is not None
            and frame.utterance_id in utterance_ids
            and not frame.uninterruptible
        ):
            work.cancel()
            return work
        return None


class GraphRun:
    """One session's running instance of a ``Graph``."""

    def __init__(
        self,
        graph: Graph,
        *,
        settings: AnchorSettings,
        ctx: StageContext,
        hooks: Hooks,
        audio_out: Channel,
        video_out: Channel,
        owner: TaskOwner,
    ) -> None:
        self.graph = graph
        self.settings = settings
        self.ctx = ctx
        self.owner = owner
        self.order = graph.topological()
        self.runners = {id(s): StageRunner(s, settings, hooks) for s in graph.stages}
        ports = {id(AUDIO_OUT): audio_out, id(VIDEO_OUT): video_out}
        for link in graph.links:
            src = self.runners[id(link.src)]
            if isinstance(link.dst, OutputPort):
                port, channel = link.dst, ports[id(link.dst)]
                src.outputs.append((_port_route(port, channel), link.kinds))
            else:
                src.outputs.append((_fixed_route(self.runners[id(link.dst)].inbox), link.kinds))
        self.roots = [self.runners[id(s)] for s in graph.roots()]
        self._started: list[Stage] = []

    async def start(self) -> None:
        for stage in self.order:
            await stage.start(self.ctx)
            self._started.append(stage)
        for stage in self.order:
            self.owner.spawn(self.runners[id(stage)].loop(), stage.name)

    async def push(self, frame: Frame) -> None:
        """Feed a session input frame to every root stage that accepts it."""
        targets = [r for r in self.roots if isinstance(frame, r.stage.accepts)]
        if not targets:
            names = ", ".join(r.stage.name for r in self.roots) or "none"
            raise ValueError(f"no root stage accepts {type(frame).__name__} (roots: {names})")
        for runner in targets:
            await runner.inbox.put(frame)

    def cancel(self, utterance_ids: frozenset[str]) -> list[asyncio.Task[None]]:
        cancelled = []
        for stage in self.order:
            work = self.runners[id(stage)].cancel(utterance_ids)
            if work is not None:
                cancelled.append(work)
        return cancelled

    async def stop_stages(self) -> None:
        for stage in reversed(self._started):
            try:
                async with asyncio.timeout(self.settings.graph.cancel_timeout_s):
                    await stage.stop()
            except Exception:  # one stage failing to stop must not keep the others open
                log.exception("stage %s failed to stop", stage.name)
        self._started.clear()


def _port_route(port: OutputPort, channel: Channel) -> Callable[[Frame], Channel | None]:
    def route(frame: Frame) -> Channel | None:
        return channel if isinstance(frame, port.kinds) else None

    return route


def _fixed_route(channel: Channel) -> Callable[[Frame], Channel | None]:
    def route(_frame: Frame) -> Channel | None:
        return channel

    return route
