"""Viewers come and go for hours: after each leaves, nothing of it may stay behind."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streams.server import close_pc
from tests.edge import Edge, served_anchor
from tests.test_webrtc import post, until

VIEWERS = 50
#: RSS may grow this much over the viewers after the first ten (the allocator keeps freed pages).
RSS_GROWTH_MB = 60.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _one_viewer(edge: Edge) -> None:
    """Connect, receive a little of the program, leave (the viewer closes its side, as a tab would)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: list[object] = []
    readers: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(track: object) -> None:
        async def read() -> None:
            while len(frames) < 3:
                frames.append(await track.recv())  # type: ignore[attr-defined]

        readers.append(asyncio.get_running_loop().create_task(read(), name="leak:read"))

    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    pc.createDataChannel("events")
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    status, answer = await post(edge.url, "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
    assert status == 200, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        await until(lambda: len(frames) >= 3, timeout_s=20)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await close_pc(pc)
    await until(lambda: not edge.server.peers, timeout_s=20)


@pytest.mark.timeout(300)
async def test_viewers_that_come_and_go_leave_nothing_behind() -> None:
    await come_and_go(VIEWERS)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_two_hundred_viewers_leave_nothing_behind() -> None:
    await come_and_go(200)


def _census(edge: Edge) -> dict[str, int]:
    """What a viewer could leave behind: tasks, threads, descriptors, program subscriptions."""
    gc.collect()
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "fds": _fds(),
        "subscribers": edge.session.pacer.subscribers,
    }


async def come_and_go(viewers: int) -> None:
    """``viewers`` come and go one after another; everything returns to where it was after the first."""
    async with served_anchor(256, offers_per_minute=10_000) as edge:
        await _one_viewer(edge)  # warm-up: codecs, ICE, the first encoder
        base = _census(edge)
        rss = []
        for n in range(viewers):
            await _one_viewer(edge)
            if n in (9, viewers - 1):
                gc.collect()
                rss.append(_rss_mb())
        await asyncio.sleep(0)
        after = _census(edge)
        assert not edge.server.peers
        assert after["subscribers"] == base["subscribers"]
        assert after["tasks"] <= base["tasks"], (base, after)
        assert after["threads"] <= base["threads"] + 2, (base, after)
        assert after["fds"] <= base["fds"] + 4, (base, after)
        growth = rss[1] - rss[0]
        print(f"RSS {rss[0]:.0f} MB after 10 viewers, {rss[1]:.0f} MB after {viewers}")
        assert growth <= RSS_GROWTH_MB, f"RSS grew {growth:.0f} MB over {viewers - 10} viewers ({rss})"
