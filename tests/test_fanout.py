"""Fan-out through a real Janus (Debian's, run from deploy/janus's config on loopback): one publish, many
viewers subscribed through the anchor's relay, tokens that gate it, and a Janus restart survived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from anchor.bench.fanout import (
    Janus,
    bench_fanout,
    close_receivers,
    janus_binary,
    running_janus,
    until_janus_answers,
    watch_through_sfu,
)
from anchor.bench.streams import Receiver
from anchor.core.config import AnchorSettings
from streams.aiortc_compat import allow_loopback_candidates, video_counted_not_decoded
from streams.auth import TokenAuthority
from streams.janus import JanusSession
from streams.settings import FanoutSettings
from tests.edge import Edge, served_anchor

SECRET = "a-test-secret-of-at-least-32-bytes!"
VIEWERS = 10

pytestmark = pytest.mark.skipif(janus_binary() is None, reason="needs Debian's janus (CI installs it)")


@pytest.fixture
def janus() -> Iterator[Janus]:
    allow_loopback_candidates()
    with running_janus() as janus, video_counted_not_decoded():
        yield janus


@pytest.fixture
async def fanned(janus: Janus) -> AsyncIterator[Edge]:
    """The test anchor (FakeTTS, animator face) publishing into ``janus``, talking without pause."""
    settings = FanoutSettings(mode="janus", janus_url=janus.url, janus_admin_key=janus.admin_key)
    async with aiohttp.ClientSession() as http:
        await until_janus_answers(http, janus)
    async with served_anchor(256, fanout=settings, connect_timeout_s=2.0) as edge:
        talker = asyncio.get_running_loop().create_task(keep_saying(edge))
        try:
            async with asyncio.timeout(30):
                await edge.server.fanouts["main"].published.wait()
            yield edge
        finally:
            talker.cancel()
            await asyncio.gather(talker, return_exceptions=True)


async def keep_saying(edge: Edge) -> None:
    while True:
        uid = await edge.session.say("Good evening, here is the news at this hour. " * 3)
        await edge.session.outcome(uid)


async def until_video(receivers: list[Receiver], frames: int, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while min(len(r.video) for r in receivers) < frames:  # noqa: ASYNC110 - filled by the readers
            await asyncio.sleep(0.05)


async def test_viewers_watch_through_janus_and_the_anchor_encodes_once(fanned: Edge) -> None:
    receivers: list[Receiver] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fanned.url}/config") as r:
            assert (await r.json())["fanout"] == ["main"], "the page is told to watch through the SFU"
        try:
            viewers = []
            for _ in range(VIEWERS):
                receiver, viewer = await watch_through_sfu(http, fanned.url, "main")
                receivers.append(receiver)
                viewers.append(viewer)
            await until_video(receivers, 25)
            assert all(r.audio_pts for r in receivers), "every viewer hears the program too"
            assert not fanned.server.peers, "no viewer is a peer of the anchor: one encode, in the publisher"
            assert len(fanned.server.fanout_viewers) == VIEWERS
            async with http.get(f"{fanned.url}/metrics") as r:
                assert f'anchor_fanout_viewers{{session="main"}} {VIEWERS}.0' in await r.text()
            async with http.delete(f"{fanned.url}/fanout/main/{viewers[0]}") as r:
                assert r.status == 200
            assert len(fanned.server.fanout_viewers) == VIEWERS - 1
            await close_receivers(receivers[1:2])  # leaves without a word: Janus says it hung up
            async with asyncio.timeout(15):
                while viewers[1] in fanned.server.fanout_viewers:  # noqa: ASYNC110 - Janus's hangup event
                    await asyncio.sleep(0.05)
            assert len(fanned.server.fanout_viewers) == VIEWERS - 2
        finally:
            await close_receivers(receivers)


async def test_the_program_comes_back_after_janus_is_killed_and_restarted(fanned: Edge, janus: Janus) -> None:
    publisher = fanned.server.fanouts["main"]
    async with aiohttp.ClientSession() as http:
        before, _ = await watch_through_sfu(http, fanned.url, "main")
        try:
            await until_video([before], 10)
            janus.kill()
            killed = time.monotonic()
            async with asyncio.timeout(10):
                while publisher.published.is_set():  # noqa: ASYNC110 - the publisher's poll notices
                    await asyncio.sleep(0.05)
            async with http.post(f"{fanned.url}/fanout/main") as r:
                assert r.status == 503 and r.headers["Retry-After"] == "2", "no SFU: come back shortly"
            janus.start()
            async with asyncio.timeout(30):
                await publisher.published.wait()
            after, _ = await watch_through_sfu(http, fanned.url, "main")
            try:
                await until_video([after], 10)
                back_in = time.monotonic() - killed
                assert len(fanned.server.fanout_viewers) == 1, (
                    "the viewer from before the kill went with its SFU"
                )
            finally:
                await close_receivers([after])
        finally:
            await close_receivers([before])
    assert publisher.publishes == 2 and len(publisher.republish_s) == 1
    assert back_in < 20, f"a viewer had the program again {back_in:.1f} s after the kill"


async def test_the_relay_takes_only_the_viewers_own_tokens_and_answers(janus: Janus) -> None:
    settings = FanoutSettings(mode="janus", janus_url=janus.url, janus_admin_key=janus.admin_key)
    async with aiohttp.ClientSession() as http:
        await until_janus_answers(http, janus)
    authority = TokenAuthority(SECRET.encode())
    ana = {"Authorization": f"Bearer {authority.issue('ana', 'main', {'watch'})}"}
    bob = {"Authorization": f"Bearer {authority.issue('bob', 'main', {'watch'})}"}
    async with (
        served_anchor(256, fanout=settings, jwt_secret=SECRET, dev_open=False, connect_timeout_s=1.0) as edge,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(30):
            await edge.server.fanouts["main"].published.wait()
        async with http.post(f"{edge.url}/fanout/main") as r:
            assert r.status == 401, "no token, no subscription"
        async with http.post(f"{edge.url}/fanout/main", headers=ana) as r:
            assert r.status == 201
            viewer = (await r.json())["viewer"]
        answer = {"type": "answer", "sdp": "v=0\r\n"}
        async with http.post(f"{edge.url}/fanout/main/{viewer}", json=answer, headers=bob) as r:
            assert r.status == 403, "bob cannot answer for ana's subscription"
        async with http.post(f"{edge.url}/fanout/main/{viewer}", json=answer, headers=ana) as r:
            assert r.status == 400 and "SDP answer" in (await r.json())["error"]
        async with asyncio.timeout(5):
            while viewer in edge.server.fanout_viewers:  # noqa: ASYNC110 - dropped by its timer
                await asyncio.sleep(0.05)
        async with http.post(f"{edge.url}/fanout/main/{viewer}", json=answer, headers=ana) as r:
            assert r.status == 404, "an unanswered subscription gave its place back"
        receiver, _ = await watch_through_sfu(
            http, edge.url, "main", token=authority.issue("ana", "main", {"watch"})
        )
        try:
            await until_video([receiver], 10)
        finally:
            await close_receivers([receiver])


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_fifty_viewers_all_get_the_program_while_the_anchors_cpu_stays_flat() -> None:
    """The issue's numbers: ``anchor bench fanout`` itself (the anchor in its own process)."""
    result = await bench_fanout(AnchorSettings(), viewers=50, seconds=10.0)
    assert result["viewers"]["receiving"] == 50, result["viewers"]
    assert abs(result["anchor_cpu"]["change"]) <= 0.10, result["anchor_cpu"]
    assert result["republish_s"]["viewer_watching_again_s"] < 10, result["republish_s"]


async def rooms_in(janus: Janus) -> list[int]:
    """The rooms Janus holds, private ones included (the admin key shows them)."""
    async with aiohttp.ClientSession() as http, JanusSession(http, janus.url) as session:
        handle = await session.attach()
        listing = await session.request(handle, {"request": "list", "admin_key": janus.admin_key})
    return [int(room["room"]) for room in listing["list"]]


async def test_a_clean_stop_leaves_no_room_behind_in_janus(janus: Janus) -> None:
    settings = FanoutSettings(mode="janus", janus_url=janus.url, janus_admin_key=janus.admin_key)
    async with aiohttp.ClientSession() as http:
        await until_janus_answers(http, janus)
    async with served_anchor(256, fanout=settings) as edge:
        publisher = edge.server.fanouts["main"]
        async with asyncio.timeout(30):
            await publisher.published.wait()
        assert publisher.room is not None
        room = publisher.room.id
        assert room in await rooms_in(janus)
    assert room not in await rooms_in(janus), "the anchor destroyed its room when it stopped"
