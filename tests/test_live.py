"""``anchor run``: the live anchor on the embedded defaults, served and shut down cleanly."""

from __future__ import annotations

import asyncio

import aiohttp

from anchor import AnchorSettings
from anchor.live import LiveAnchor, serve
from streams.auth import TokenAuthority


async def test_the_live_anchor_serves_speaks_and_stops() -> None:
    settings = AnchorSettings(webrtc={"port": 0})  # type: ignore[arg-type]
    seen: dict[str, object] = {}
    finished = asyncio.Event()

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
        finished.set()

    task = asyncio.get_running_loop().create_task(serve(settings, ready))
    async with asyncio.timeout(60):
        await finished.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen["health"] == {"peers": 0, "sessions": ["main"], "draining": False}
    assert seen["page"] == (200, True)
    assert seen["say"] == 202
