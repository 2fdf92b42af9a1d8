"""Shard jobs in worker processes, or in this process when one worker is asked for.

Workers are spawned, never forked: a fork of a process whose torch or
onnxruntime thread pools are running can deadlock in the child.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")


def in_workers(
    work: Callable[[J], R],
    jobs: Sequence[J],
    workers: int,
    init: Callable[..., None],
    args: tuple[object, ...],
) -> Iterator[R]:
    """``work(job)`` for every job, in order, after ``init(*args)`` in each worker."""
    if workers <= 1:
        init(*args)
        for job in jobs:
            yield work(job)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init, initargs=args) as pool:
        yield from pool.map(work, jobs)
