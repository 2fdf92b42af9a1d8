"""``anchor run``: the live anchor on the embedded defaults, served and shut down cleanly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from anchor import AnchorSettings
from anchor.live import LiveAnchor, serve
from anchor.offline import join_audio, render_text
from anchor.quality import word_error_rate
from streams.auth import TokenAuthority
from streams.server import close_pc
from tests.edge import Microphone


async def while_live(check: Callable[[LiveAnchor], Awaitable[None]], timeout_s: float = 90) -> None:
    """Serve ``anchor run`` on a free port, run ``check`` against it, then shut it down (re-raising)."""
    checked = asyncio.Event()

    async def ready(live: LiveAnchor) -> None:
        await check(live)
        checked.set()

    loop = asyncio.get_running_loop()
    task = loop.create_task(serve(AnchorSettings(webrtc={"port": 0}), ready))  # type: ignore[arg-type]
    waiter = loop.create_task(checked.wait())
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        waiter.cancel()
        outcome, _ = await asyncio.gather(task, waiter, return_exceptions=True)
    if isinstance(outcome, Exception):
        raise outcome


async def test_the_live_anchor_serves_speaks_and_stops() -> None:
    seen: dict[str, object] = {}

    async def ready(live: LiveAnchor) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{live.server.url}/healthz") as r:
                seen["health"] = await r.json()
            async with http.get(live.viewer_url) as r:
                seen["page"] = r.status, "RTCPeerConnection" in await r.text()
            async with http.post(f"{live.server.url}/say", json={"text": "Good evening."}) as r:
                seen["say"] = r.status
        assert live.token is not None
        secret = live.server.settings.jwt_secret
        assert secret is not None
        seen["token"] = TokenAuthority(secret.get_secret_value().encode()).verify(
            f"Bearer {live.token}", session="main", need="control"
        )

    await while_live(ready, 60)
    assert seen["health"] == {"peers": 0, "sessions": ["main"], "draining": False}
    assert seen["page"] == (200, True)
    assert seen["say"] == 202


async def test_a_viewer_who_speaks_interrupts_and_is_transcribed() -> None:
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
                while not any(m["kind"] == "transcript" for m in messages):  # noqa: ASYNC110 - aiortc callbacks
                    await asyncio.sleep(0.1)
        finally:
            await close_pc(pc)
        seen["messages"], seen["said"] = messages, said

    await while_live(ready)
    messages = seen["messages"]
    ended = [m for m in messages if m["kind"] == "utterance_finished" and m["utterance"] == seen["said"]]
    assert ended and ended[0]["detail"] == "interrupted", "the anchor stops when the viewer speaks"
    heard = next(m["detail"] for m in messages if m["kind"] == "transcript")
    assert word_error_rate([question], [heard]) <= 0.2, heard
