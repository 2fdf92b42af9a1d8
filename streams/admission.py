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


class CpuLoad:
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="admission:cpu")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 2.0)
            self._task = None

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


class RecentRate:
    """How fast a cumulative count (such as frames dropped) rose over the last ``window_s``, per second."""

    def __init__(self, total: Callable[[], int], *, window_s: float = 5.0, every_s: float = 0.5) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self._total = total
        self._samples: deque[tuple[float, int]] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="admission:drops")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 2.0)
            self._task = None

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
