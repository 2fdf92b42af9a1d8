"""Admitting viewers by measured load: a new viewer is let in only while the process keeps up.

Each WebRTC viewer costs its own video encode in this process, and every
viewer slows when the CPUs are saturated (the first one included). So the
server watches what this process uses of the CPUs it may run on, and what
the whole machine uses of all its CPUs (others' work takes CPU from us
too), each averaged over a few seconds, and refuses a new viewer (503 with
``Retry-After``) while the larger is above ``webrtc.max_cpu_load``. The first
viewer is always let in (with none, there is no one to protect, and the
anchor's own work may well be most of the load). The fixed ``max_peers``
stays as a hard ceiling.

CPU share alone cannot see a machine shared with other work (the anchor
then falls behind below its own threshold), so the viewers themselves are
watched too: each viewer's feed drops a video frame when its encoder falls
more than a few frames behind, and while viewers together drop more than
``webrtc.admit_max_drops_per_s`` (over the same window), no one new is let
in either.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable

from anchor.core.aio import cancel_and_wait


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def host_busy_seconds(stat: str = "/proc/stat") -> float:
    """CPU seconds the whole machine has spent busy (all CPUs, since boot); 0 where there is no /proc."""
    try:
        with open(stat, encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


class Sampler:
    """A signal sampled every ``every_s`` by one background task, between ``start()`` and ``stop()``."""

    every_s: float
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        name = f"admission:{type(self).__name__}"
        self._task = asyncio.get_running_loop().create_task(self._sample(), name=name)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 2.0)
            self._task = None

    async def _sample(self) -> None:
        raise NotImplementedError


class CpuLoad(Sampler):
    """This process's CPU time per wall second and usable CPU, smoothed over ``window_s`` (0..1, or
    more when other processes' time is counted)."""

    def __init__(
        self,
        *,
        window_s: float = 5.0,
        every_s: float = 0.5,
        cpu_time: Callable[[], float] = time.process_time,
        cpus: int | None = None,
    ) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._cpu_time = cpu_time
        self._cpus = cpus or usable_cpus()
        self.value = 0.0

    def __call__(self) -> float:
        return self.value

    async def _sample(self) -> None:
        cpu, wall = self._cpu_time(), time.monotonic()
        while True:
            await asyncio.sleep(self.every_s)
            cpu_now, wall_now = self._cpu_time(), time.monotonic()
            spent = wall_now - wall
            if spent > 0:
                busy = (cpu_now - cpu) / spent / self._cpus
                weight = min(1.0, spent / self.window_s)
                self.value += weight * (busy - self.value)
            cpu, wall = cpu_now, wall_now


class RecentRate(Sampler):
    """How fast a cumulative count (such as frames dropped) rose over the last ``window_s``, per second."""

    def __init__(self, total: Callable[[], int], *, window_s: float = 5.0, every_s: float = 0.5) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._total = total
        self._samples: deque[tuple[float, int]] = deque()

    def __call__(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    async def _sample(self) -> None:
        while True:
            now = time.monotonic()
            self._samples.append((now, self._total()))
            while self._samples and now - self._samples[0][0] > self.window_s:
                self._samples.popleft()
            await asyncio.sleep(self.every_s)


class MachineLoad:
    """The larger of this process's share of its usable CPUs and the machine's busy share of all its
    CPUs, each averaged over ``window_s``."""

    def __init__(self, *, window_s: float = 5.0) -> None:
        self.process = CpuLoad(window_s=window_s)
        self.host = CpuLoad(window_s=window_s, cpu_time=host_busy_seconds, cpus=os.cpu_count() or 1)

    def start(self) -> None:
        self.process.start()
        self.host.start()

    async def stop(self) -> None:
        await self.process.stop()
        await self.host.stop()

    def __call__(self) -> float:
        return max(self.process(), self.host())


class ViewerAdmission:
    """Whether one more viewer fits, predicted from what each viewer has cost so far.

    A viewer's cost is the load it adds (mostly its encode). The load with no
    viewer is noted when the first one comes (it is always let in); after
    that, each viewer's cost is the load above that, shared among the
    viewers, learned whenever the load has had a full window to show every
    viewer admitted (``settled``). A new viewer is let in only while the load
    plus the cost of it and of the viewers admitted too recently to show in
    the average stays below ``max_load``: refusing only once the load is over
    the line lets in the one viewer that pushes everyone past it. Before any
    cost is learned, ``first_guess`` stands for it.
    """

    def __init__(
        self,
        max_load: float,
        max_drops_per_s: float,
        *,
        window_s: float = 5.0,
        first_guess: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_load = max_load
        self.max_drops_per_s = max_drops_per_s
        self.window_s = window_s
        self.cost = first_guess
        self._clock = clock
        self._idle_load = 0.0
        self._joins: deque[float] = deque()

    def refusal(self, viewers: int, load: float, drops: float) -> str | None:
        """Why a new viewer must wait (None: let it in), given the viewers here, the load (0..1) and the
        video frames they drop per second."""
        now = self._clock()
        while self._joins and now - self._joins[0] > self.window_s:
            self._joins.popleft()
        if viewers == 0:
            self._idle_load = load
            return None
        measured = max(0.0, load - self._idle_load) / viewers
        if not self._joins:
            self.cost = measured  # settled: every viewer here shows in the load
        cost = max(self.cost, measured)
        predicted = load + cost * (1 + len(self._joins))
        if predicted >= self.max_load:
            return (
                f"at capacity: CPU load {load:.0%} (this process or the machine), {cost:.1%} more per "
                f"viewer; admitting while it stays below {self.max_load:.0%}"
            )
        if drops > self.max_drops_per_s:
            return (
                f"at capacity: the viewers here drop {drops:.1f} video frames/s "
                f"(admitting below {self.max_drops_per_s:g})"
            )
        return None

    def admitted(self) -> None:
        self._joins.append(self._clock())
