"""The runtime's small shared helpers: bounded recent memory, backoff with full jitter, cancel and wait."""

from __future__ import annotations

import asyncio
import random

import pytest

from anchor.core.aio import cancel_and_wait
from anchor.core.backoff import Backoff
from anchor.core.recent import RecentIds, RecentMap


def test_recent_map_keeps_the_most_recently_set_keys() -> None:
    recent: RecentMap[int] = RecentMap(3)
    for n, key in enumerate("abcd"):
        recent[key] = n
    assert "a" not in recent and len(recent) == 3
    recent["b"] = 10  # renewed: now the newest
    recent["e"] = 4
    assert "c" not in recent and recent["b"] == 10 and recent.get("zz") is None
    ids = RecentIds(2)
    for key in "xyz":
        ids.add(key)
    assert "x" not in ids and "z" in ids and len(ids) == 2
    with pytest.raises(ValueError, match="keep must be at least 1"):
        RecentMap(0)


def test_backoff_draws_from_zero_to_a_doubling_capped_ceiling() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(7))
    ceilings, delays = [], []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        delays.append(backoff.next_delay())
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(0 <= d < c for d, c in zip(delays, ceilings, strict=True))
    many = [Backoff(1.0, 1.0, rng=random.Random(i)).next_delay() for i in range(400)]
    assert min(many) < 0.05 and max(many) > 0.95, "full jitter spans the whole interval"
    backoff.reset()
    assert backoff.ceiling() == 0.5
    with pytest.raises(ValueError, match="0 < base_s <= cap_s"):
        Backoff(2.0, 1.0)


async def test_cancel_and_wait_reports_stubborn_tasks_and_can_cancel_again() -> None:
    swallowed = asyncio.Event()

    async def swallows_one_cancel() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as asyncio.wait_for on 3.11 may: the first cancel is lost
        await asyncio.sleep(60)

    async def fails() -> None:
        raise RuntimeError("boom")

    stubborn = asyncio.create_task(swallows_one_cancel(), name="stubborn")
    failing = asyncio.create_task(fails(), name="failing")
    await asyncio.sleep(0)
    assert await cancel_and_wait([stubborn, failing], 0.3) == ["stubborn"]
    assert swallowed.is_set() and failing.done()
    assert await cancel_and_wait([stubborn], 2.0, again_every_s=0.05) == []
    assert stubborn.cancelled()
