"""``anchor run``: the live anchor on the embedded defaults, served and shut down cleanly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from anchor.app.cli import main
from anchor.app.live import LiveAnchor, serve, while_serving
from anchor.app.offline import join_audio, render_text
from anchor.app.settings import AppSettings
from anchor.core.runtime import Runtime
from anchor.responders.faq import load_faq
from anchor.testing.quality import word_error_rate
from streams.auth import TokenAuthority
from streams.server import close_pc
from tests.edge import Microphone
from tests.helpers import free_port


async def while_live(
    check: Callable[[LiveAnchor], Awaitable[None]], news: Path, timeout_s: float = 90
) -> None:
    """Serve ``anchor run`` on a free port (news queue in ``news``), run ``check``, shut it down (re-raising)."""
    settings = AppSettings(webrtc={"port": 0}, news={"database": news})  # type: ignore[arg-type]
    async with asyncio.timeout(timeout_s):
        await while_serving(settings, check)


async def test_the_live_anchor_serves_speaks_and_stops(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def ready(live: LiveAnchor) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{live.server.url}/healthz") as r:
                seen["health"] = await r.json()
            async with http.get(live.viewer_url) as r:
                seen["page"] = r.status, "RTCPeerConnection" in await r.text()
            async with http.post(f"{live.server.url}/say", json={"text": "Good evening."}) as r:
                seen["say"] = r.status
        seen["engines"] = set(live.runtime.engines.loaded())
        assert live.token is not None
        secret = live.server.settings.jwt_secret
        assert secret is not None
        seen["token"] = TokenAuthority(secret.get_secret_value().encode()).verify(
            f"Bearer {live.token}", session="main", need="control"
        )

    await while_live(ready, tmp_path / "news.db", 60)
    health = seen["health"]
    assert isinstance(health, dict) and 0 <= health.pop("cpu_load") <= 2
    assert health.pop("viewer_drops_per_s") == 0 and health.pop("live_lines") >= 0
    assert health == {"ready": True, "peers": 0, "sessions": ["main"], "draining": False}
    assert seen["page"] == (200, True)
    assert seen["say"] == 202
    assert "mouth-gan" in seen["engines"], "our mouth GAN moves the live face by default"
    assert "piper-joe" in seen["engines"], "Piper, the listening gate's choice, is the live voice by default"


async def test_a_viewer_who_speaks_interrupts_is_transcribed_and_answered(tmp_path: Path) -> None:
    question = "What is the weather tomorrow?"
    seen: dict[str, Any] = {}

    async def ready(live: LiveAnchor) -> None:
        voice = join_audio(await render_text(live.runtime, question))
        said = await live.runtime.sessions["main"].say("Good evening. " * 12)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver(Microphone(np.concatenate([np.zeros(48000), voice])), direction="sendrecv")
        channel = pc.createDataChannel("events")
        messages: list[dict[str, Any]] = []
        channel.on("message", lambda m: messages.append(json.loads(m)))
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        async with aiohttp.ClientSession() as http:
            body = {"sdp": pc.localDescription.sdp, "type": "offer"}
            async with http.post(f"{live.server.url}/offer", json=body) as r:
                answer = await r.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        try:
            async with asyncio.timeout(60):
                while not any(  # noqa: ASYNC110 - aiortc callbacks fill messages
                    m["kind"] == "utterance_finished" and m["utterance"] in asked(messages) for m in messages
                ):
                    await asyncio.sleep(0.1)
        finally:
            await close_pc(pc)
        seen["messages"], seen["said"] = messages, said

    await while_live(ready, tmp_path / "news.db")
    messages = seen["messages"]
    ended = [m for m in messages if m["kind"] == "utterance_finished" and m["utterance"] == seen["said"]]
    assert ended and ended[0]["detail"] == "interrupted", "the anchor stops when the viewer speaks"
    heard = next(m["detail"] for m in messages if m["kind"] == "transcript")
    assert word_error_rate([question], [heard]) <= 0.2, heard
    (answered,) = asked(messages)
    answer = "".join(m["detail"] for m in messages if m["kind"] == "answer" and m["utterance"] == answered)
    assert answer == next(e.answer for e in load_faq(None) if e.question == "What's the weather like?")
    ended = [
        m["detail"] for m in messages if m["kind"] == "utterance_finished" and m["utterance"] == answered
    ]
    assert ended == ["done"], "the answer is spoken to its end"


def asked(messages: list[dict[str, Any]]) -> set[str]:
    return {m["utterance"] for m in messages if m["kind"] == "question"}


async def test_news_from_the_page_is_queued_listed_and_read(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def ready(live: LiveAnchor) -> None:
        events = live.runtime.sessions["main"].events()
        story = {"title": "Rates", "body": "The bank held rates at four percent.", "priority": 2}
        async with aiohttp.ClientSession() as http:
            for bad, message in [
                ({"title": "Rates"}, "invalid news/enqueue command: body: Field required"),
                ({**story, "priority": "high"}, "priority: Input should be a valid integer"),
                ({**story, "priority": 11}, "priority: Input should be less than or equal to 10"),
                ({**story, "colour": "red"}, "colour: Extra inputs are not permitted"),
            ]:
                async with http.post(f"{live.server.url}/news", json=bad) as r:
                    seen.setdefault("bad", []).append((r.status, message in (await r.json())["error"]))
            async with http.post(f"{live.server.url}/news", json=story) as r:
                seen["queued"] = r.status, await r.json()
            async with http.post(f"{live.server.url}/news", json=story) as r:
                seen["again"] = r.status, (await r.json())["queued"]
            started: list[str] = []
            async with asyncio.timeout(30):
                async for event in events:
                    if event.kind == "utterance_started" and event.origin == "news":
                        started.append(event.detail)
                    if len(started) == 2:
                        break
            async with http.get(f"{live.server.url}/news") as r:
                seen["listing"] = await r.json()
        events.close()
        seen["started"] = started

    await while_live(ready, tmp_path / "news.db")
    assert seen["bad"] == [(400, True)] * 4
    status, body = seen["queued"]
    assert status == 201 and body["queued"] is True
    assert seen["again"] == (200, False), "the same story twice is queued once"
    assert seen["started"] == ["Rates.", "The bank held rates at four percent."]
    listing = seen["listing"]
    assert listing["desk"]["on_air"] is True
    assert [i["id"] for i in listing["pending"] + listing["recent"]] == [body["id"]]


@pytest.mark.parametrize("begun_by", ["sigterm", "prestop"])
async def test_a_drain_refuses_newcomers_lets_the_line_finish_then_stops(
    tmp_path: Path, begun_by: str
) -> None:
    """What SIGTERM does in ``anchor run`` (``stop`` set while a line is spoken), or a Kubernetes preStop
    hook before it (``anchor drain --wait``: it returns once the line is spoken)."""
    settings = AppSettings(  # type: ignore[arg-type]
        webrtc={"port": 0, "drain_grace_s": 60}, news={"database": tmp_path / "news.db"}
    )
    stop, up = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def ready(live: LiveAnchor) -> None:
        up.set_result(live)

    serving = asyncio.get_running_loop().create_task(serve(settings, ready, stop=stop))
    async with asyncio.timeout(120):
        live: LiveAnchor = await asyncio.shield(up)
        session = live.runtime.sessions["main"]
        events = session.events()
        url = live.server.url
        said = await session.say("Good evening. This line is read to its end before the anchor goes. " * 2)
        while (event := await events.next()) is not None and event.kind != "audio_started":
            pass
        if begun_by == "sigterm":
            stop.set()
        else:
            draining = asyncio.create_task(
                asyncio.to_thread(main, ["drain", "--port", str(live.server.port), "--wait"])
            )
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 503:
                        assert (await r.json())["draining"] is True
                        break
                await asyncio.sleep(0.05)
            async with http.get(f"{url}/healthz") as r:
                assert r.status == 200, "still alive while draining"
            async with http.post(f"{url}/say", json={"text": "One more thing."}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
            async with http.post(f"{url}/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                assert r.status == 503
            async with http.get(f"{url}/metrics") as r:
                assert "anchor_draining 1.0" in await r.text()
        ends = []
        if begun_by == "prestop":
            assert await draining == 0
            assert session.live_lines() == 0, "anchor drain --wait returned once the line was spoken"
            stop.set()  # then Kubernetes sends SIGTERM
        while (event := await events.next()) is not None:
            if event.kind == "utterance_finished":
                ends.append((event.utterance_id, event.detail))
        await serving
    assert ends[0] == (said, "done"), "the line being spoken finished before the anchor closed"


async def test_the_page_and_health_come_before_the_models_and_readiness_after(tmp_path: Path) -> None:
    port = free_port()
    settings = AppSettings(webrtc={"port": port}, news={"database": tmp_path / "news.db"})  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{port}"
    seen: list[tuple[int, int]] = []
    original = Runtime.open_session

    async def slow_open(runtime: Runtime, *args: Any, **kwargs: Any) -> Any:
        """While the session opens (the models load), ask the already-started server how it is."""
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(f"{url}{path}") as r:
                    seen.append((r.status, 0))
            async with http.post(f"{url}/offer", json={"sdp": "v=0", "type": "offer"}) as r:
                seen.append((r.status, int(r.headers.get("Retry-After", 0))))
        return await original(runtime, *args, **kwargs)

    async def check(live: LiveAnchor) -> None:
        async with aiohttp.ClientSession() as http, http.get(f"{live.server.url}/readyz") as r:
            seen.append((r.status, 0))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Runtime, "open_session", slow_open)
        async with asyncio.timeout(90):
            await while_serving(settings, check)
    assert seen == [(200, 0), (503, 0), (503, 5), (200, 0)]
