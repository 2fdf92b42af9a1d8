from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest

from anchor.core.channel import Channel, Overflow
from anchor.core.frames import AudioChunk, Frame, TextDelta, VideoFrame


def audio(ms: int, uid: str = "u", **kw: bool) -> AudioChunk:
    return AudioChunk(pcm=np.zeros(48 * ms, dtype=np.float32), sample_rate=48000, utterance_id=uid, **kw)


def video(index: int, uid: str = "u") -> VideoFrame:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    return VideoFrame(image=image, index=index, fps=Fraction(25), sample_rate=48000, utterance_id=uid)


async def test_audio_blocks_its_producer_until_space_frees() -> None:
    ch = Channel("a", capacity_ms=100, max_items=100, overflow=Overflow.BLOCK)
    await ch.put(audio(40))
    await ch.put(audio(40))
    third = asyncio.create_task(ch.put(audio(40)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done(), "a full audio channel must block its producer"
    assert ch.buffered_ms == pytest.approx(80)
    await ch.get()
    await asyncio.wait_for(third, 1)
    assert len(ch) == 2 and ch.buffered_ms == pytest.approx(80)


async def test_video_drops_the_oldest_and_counts() -> None:
    dropped: list[Frame] = []
    ch = Channel("v", capacity_ms=100, max_items=100, overflow=Overflow.DROP_OLDEST, on_drop=dropped.append)
    for i in range(5):
        await ch.put(video(i))  # never blocks
    assert ch.dropped == 3
    assert [f.index for f in dropped if isinstance(f, VideoFrame)] == [0, 1, 2]
    kept = [await ch.get(), await ch.get()]
    assert [f.index for f in kept if isinstance(f, VideoFrame)] == [3, 4]


async def test_empty_channel_takes_an_oversized_frame_and_items_are_bounded() -> None:
    ch = Channel("a", capacity_ms=10, max_items=2, overflow=Overflow.BLOCK)
    await asyncio.wait_for(ch.put(audio(500)), 1)
    assert len(ch) == 1
    await ch.get()
    await ch.put(TextDelta(text="a"))
    await ch.put(TextDelta(text="b"))
    blocked = asyncio.create_task(ch.put(TextDelta(text="c")))
    await asyncio.sleep(0)
    assert not blocked.done(), "frames without duration are bounded by count"
    await ch.get()
    await asyncio.wait_for(blocked, 1)


async def test_flush_keeps_uninterruptible_and_releases_stale_producers() -> None:
    cancelled: set[str] = set()
    ch = Channel(
        "a",
        capacity_ms=50,
        max_items=10,
        overflow=Overflow.BLOCK,
        is_stale=lambda f: f.utterance_id in cancelled,
    )
    await ch.put(audio(20, "keep", uninterruptible=True))
    await ch.put(audio(20, "drop"))
    producer = asyncio.create_task(ch.put(audio(20, "drop")))
    await asyncio.sleep(0)
    assert not producer.done()
    cancelled.add("drop")
    removed = ch.flush(lambda f: f.utterance_id == "drop" and not f.uninterruptible)
    await asyncio.wait_for(producer, 1)  # woke, saw its frame is stale, returned
    assert removed == 1 and ch.discarded_stale == 1
    assert [f.utterance_id for f in [await ch.get()]] == ["keep"] and len(ch) == 0
    await ch.put(audio(20, "drop"))
    assert len(ch) == 0 and ch.discarded_stale == 2


def test_bad_bounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="capacity_ms must be positive, got 0"):
        Channel("x", capacity_ms=0, max_items=1, overflow=Overflow.BLOCK)
