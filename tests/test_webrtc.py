"""The WebRTC edge against real aiortc peers on loopback: media, captions, auth, bad input, WHEP, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import jwt
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from anchor.app.cli import main
from anchor.core.frames import AudioChunk, Frame
from anchor.core.stage import Stage
from anchor.responders.answer import Responder
from streams.admission import CpuLoad, RecentRate, ViewerAdmission, host_busy_seconds
from streams.auth import TokenAuthority
from streams.server import close_pc
from streams.settings import WebRtcSettings
from tests.edge import Edge, Microphone, served_anchor
from tests.helpers import until

SECRET = "s" * 40
SIZE = 256


@pytest.fixture
async def edge(request: pytest.FixtureRequest) -> AsyncIterator[Edge]:
    async with served_anchor(SIZE, **getattr(request, "param", {})) as served:
        yield served


@dataclass
class Viewer:
    pc: RTCPeerConnection
    video: list[av.VideoFrame] = field(default_factory=list)
    audio: list[av.AudioFrame] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    channel: Any = None

    def messages_open(self) -> bool:
        return self.channel is not None and self.channel.readyState == "open"

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await close_pc(self.pc)


async def _collect(track: Any, into: list[Any]) -> None:
    while True:
        try:
            into.append(await track.recv())
        except MediaStreamError:
            return


async def offer_sdp(viewer: Viewer | None = None) -> tuple[RTCPeerConnection, str]:
    pc = viewer.pc if viewer else RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    channel = pc.createDataChannel("events")
    if viewer is not None:
        viewer.channel = channel
        channel.on("message", lambda m: viewer.messages.append(json.loads(m)))
    await pc.setLocalDescription(await pc.createOffer())
    assert pc.localDescription is not None
    return pc, pc.localDescription.sdp


async def connect(url: str, *, token: str | None = None) -> Viewer:
    viewer = Viewer(RTCPeerConnection(RTCConfiguration(iceServers=[])))
    pc, sdp = await offer_sdp(viewer)
    loop = asyncio.get_running_loop()

    @pc.on("track")
    def _track(track: Any) -> None:
        viewer.tasks.append(
            loop.create_task(_collect(track, viewer.video if track.kind == "video" else viewer.audio))
        )

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, body = await post(url, "/offer", json={"sdp": sdp, "type": "offer"}, headers=headers)
    assert status == 200, body
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    return viewer


async def post(url: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}{path}", **kwargs) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text


async def test_a_viewer_sees_the_face_hears_the_voice_and_gets_captions(edge: Edge) -> None:
    viewer = await connect(edge.url)
    try:
        await until(lambda: len(viewer.video) >= 10)
        status, body = await post(edge.url, "/say", json={"text": "good evening and welcome to the news"})
        assert status == 202 and body["utterance"].startswith("main/")
        await until(
            lambda: (
                len(viewer.video) >= 60 and any(m["kind"] == "utterance_finished" for m in viewer.messages)
            )
        )
    finally:
        await viewer.close()
    frame = viewer.video[-1]
    assert (frame.width, frame.height) == (SIZE, SIZE)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in viewer.audio]).astype(np.float32)
    assert np.abs(pcm).max() > 1000, "the voice arrives (s16)"
    assert viewer.audio[0].sample_rate == 48000
    started = [m for m in viewer.messages if m["kind"] == "utterance_started"]
    assert started and started[0]["detail"] == "good evening and welcome to the news"


async def test_two_viewers_watch_one_session(edge: Edge) -> None:
    a, b = await connect(edge.url), await connect(edge.url)
    try:
        await until(lambda: len(a.video) >= 25 and len(b.video) >= 25)
        assert len(edge.server.peers) == 2
    finally:
        await a.close()
        await b.close()
    await until(lambda: not edge.server.peers)


@pytest.mark.parametrize("edge", [{"jwt_secret": SECRET, "dev_open": False}], indirect=True)
async def test_offers_need_a_valid_token_for_the_session(edge: Edge) -> None:
    authority = TokenAuthority(SECRET.encode())
    _, sdp = await offer_sdp()
    body = {"sdp": sdp, "type": "offer"}
    status, reply = await post(edge.url, "/offer", json=body)
    assert (status, reply["error"]) == (401, "missing Authorization: Bearer token")
    other = authority.issue("ana", "elsewhere", {"watch"})
    status, reply = await post(edge.url, "/offer", json=body, headers={"Authorization": f"Bearer {other}"})
    assert status == 403 and "not 'main'" in reply["error"]
    now = int(time.time())
    expired = jwt.encode(
        {"sub": "ana", "session": "main", "grants": ["watch"], "iat": now - 700, "exp": now - 100}, SECRET
    )
    status, reply = await post(edge.url, "/offer", json=body, headers={"Authorization": f"Bearer {expired}"})
    assert (status, reply["error"]) == (401, "token expired")
    forged = jwt.encode(
        {"sub": "ana", "session": "main", "grants": ["watch"], "iat": now, "exp": now + 60}, "x" * 40
    )
    status, reply = await post(edge.url, "/offer", json=body, headers={"Authorization": f"Bearer {forged}"})
    assert status == 401 and "Signature verification failed" in reply["error"]
    watch_only = authority.issue("ana", "main", {"watch"})
    status, reply = await post(
        edge.url, "/say", json={"text": "hi"}, headers={"Authorization": f"Bearer {watch_only}"}
    )
    assert (status, reply["error"]) == (403, "token does not grant 'control'")
    assert not edge.server.peers
    viewer = await connect(edge.url, token=authority.issue("ana", "main", {"watch"}))
    try:
        await until(lambda: len(viewer.video) >= 5)
    finally:
        await viewer.close()


async def test_bad_requests_get_precise_4xx_and_create_no_peer(edge: Edge) -> None:
    subscribers = edge.session.pacer.subscribers
    cases = [
        ({"data": b"{not json"}, 400, "body is not JSON"),
        ({"json": {"sdp": "v=0", "type": "answer"}}, 400, "type must be 'offer'"),
        ({"json": {"sdp": "v=0", "type": "offer", "extra": 1}}, 400, "unknown fields ['extra']"),
        ({"json": {"sdp": "hello", "type": "offer"}}, 400, "SDP offer must start with 'v=0'"),
        (
            {"json": {"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"}},
            400,
            "no audio or video",
        ),
        ({"json": {"sdp": "v=0", "type": "offer", "session": "nope"}}, 404, "no session 'nope'"),
        ({"data": b"x" * (70 * 1024)}, 413, "exceeds 65536 bytes"),
    ]
    for kwargs, status, message in cases:
        got, reply = await post(edge.url, "/offer", **kwargs)
        assert got == status and message in reply["error"], (kwargs, got, reply)
    got, reply = await post(
        edge.url, "/offer", json={"sdp": "v=0"}, headers={"Origin": "https://evil.example"}
    )
    assert (got, reply["error"]) == (403, "origin 'https://evil.example' is not allowed")
    assert not edge.server.peers and edge.session.pacer.subscribers == subscribers


async def test_hostile_bodies_and_offers_get_4xx_and_the_server_stays_up(edge: Edge) -> None:
    nested = b'{"text": ' + b"[" * 8000 + b"]" * 8000 + b"}"
    for path in ("/offer", "/say", "/ask", "/interrupt", "/news"):
        status, reply = await post(edge.url, path, data=nested)
        assert (status, reply["error"]) == (400, "body nests JSON too deeply"), path
    pc, sdp = await offer_sdp()
    await close_pc(pc)
    bare = "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith("a=fingerprint"))
    status, reply = await post(edge.url, "/offer", json={"sdp": bare, "type": "offer"})
    assert status == 400 and "section has no DTLS fingerprint or setup" in reply["error"], reply
    assert not edge.server.peers
    async with aiohttp.ClientSession() as http, http.get(f"{edge.url}/healthz") as response:
        assert response.status == 200


async def test_open_dev_access_is_only_for_pages_on_a_loopback_name(edge: Edge) -> None:
    # DNS rebinding: a page on evil.example whose name resolves to 127.0.0.1 reaches this server
    # with its own name in Host (and Origin). It must not get the token-free dev access.
    rebound = {"Host": f"evil.example:{edge.server.port}"}
    status, reply = await post(edge.url, "/say", json={"text": "hello"}, headers=rebound)
    assert status == 401 and "open access is only for pages on a loopback name" in reply["error"], reply
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{edge.url}/config", headers=rebound) as response:
            assert (await response.json())["open"] is False
        async with http.get(f"{edge.url}/config") as response:
            assert (await response.json())["open"] is True
    assert not edge.session.utterances.live()
    status, _ = await post(
        edge.url, "/say", json={"text": "hello"}, headers={"Host": f"localhost:{edge.server.port}"}
    )
    assert status == 202, "a page on localhost is local"


async def test_lines_past_what_a_session_holds_are_refused_with_retry_after(edge: Edge) -> None:
    limit = edge.session.settings.graph.max_live_utterances
    statuses = []
    async with aiohttp.ClientSession() as http:
        for n in range(limit + 4):
            async with http.post(f"{edge.url}/say", json={"text": f"line {n} " + "word " * 30}) as r:
                statuses.append(r.status)
                if r.status == 503:
                    assert r.headers["Retry-After"] == "2"
                    assert "holds as many lines as it may" in (await r.json())["error"]
    assert statuses[:limit] == [202] * limit and set(statuses[limit:]) == {503}
    assert len(edge.session.utterances.live()) == limit
    await edge.session.interrupt()


@pytest.mark.parametrize("edge", [{"connect_timeout_s": 1.0}], indirect=True)
async def test_an_offer_that_never_connects_gives_its_place_back(edge: Edge) -> None:
    pc, sdp = await offer_sdp()  # answered, but this side never takes the answer: no connection
    try:
        status, reply = await post(edge.url, "/offer", json={"sdp": sdp, "type": "offer"})
        assert status == 200 and reply["peer"] in edge.server.peers
        await until(lambda: not edge.server.peers, timeout_s=5.0)
    finally:
        await close_pc(pc)


@pytest.mark.parametrize(
    ("busy", "calm", "why"),
    [
        ((0.97, 0.0), (0.2, 0.0), "at capacity: CPU load 97%"),
        ((0.2, 3.0), (0.2, 0.5), "at capacity: the viewers here drop 3.0 video frames/s"),
    ],
    ids=["cpu", "viewer-drops"],
)
async def test_new_viewers_are_refused_at_capacity_and_the_first_keeps_its_stream(
    busy: tuple[float, float], calm: tuple[float, float], why: str
) -> None:
    load = [busy]
    async with served_anchor(SIZE, load=lambda: load[0][0], drops=lambda: load[0][1]) as edge:
        first = await connect(edge.url)  # the first viewer is always admitted
        try:
            await until(lambda: len(first.video) >= 10)
            _, sdp = await offer_sdp()
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{edge.url}/offer", json={"sdp": sdp, "type": "offer"}) as r,
            ):
                assert r.status == 503 and r.headers["Retry-After"] == "5"
                assert why in (await r.json())["error"]
            assert len(edge.server.peers) == 1
            # A listener (audio only) is no encode here: only max_peers bounds it.
            listener = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            listener.addTransceiver("audio", direction="recvonly")
            await listener.setLocalDescription(await listener.createOffer())
            assert listener.localDescription is not None
            body = {"sdp": listener.localDescription.sdp, "type": "offer"}
            async with aiohttp.ClientSession() as http, http.post(f"{edge.url}/offer", json=body) as r:
                assert r.status == 200, await r.text()
                await edge.server.close_peer((await r.json())["peer"])
            await close_pc(listener)
            assert len(edge.server.peers) == 1
            seen = len(first.video)
            await until(lambda: len(first.video) >= seen + 25)  # a second more: its stream goes on
            load[0] = calm
            second = await connect(edge.url)
            await second.close()
        finally:
            await first.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response's status line (its headers and body read past)."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


@pytest.mark.parametrize("edge", [{"header_timeout_s": 0.5}], indirect=True)
async def test_a_client_that_never_finishes_its_headers_is_cut_off(edge: Edge) -> None:
    port = edge.server.port
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", port)
    writers = [slow]
    try:
        slow.write(b"POST /say HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")  # ... and no more
        began = time.monotonic()
        async with asyncio.timeout(5):
            closed = await slow_reader.read()  # EOF (or a reset) once the server gives up on it
        assert closed == b"" and time.monotonic() - began < 3
        prompt_reader, prompt = await asyncio.open_connection("127.0.0.1", port)
        writers.append(prompt)
        for _ in range(2):  # the second past the header deadline: a connection that made its request stays
            prompt.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(5):
                status = await read_response(prompt_reader)
            assert status.startswith(b"HTTP/1.1 200"), status
            await asyncio.sleep(0.8)
    finally:
        for writer in writers:
            writer.close()


@pytest.mark.parametrize("edge", [{"body_timeout_s": 0.5}], indirect=True)
async def test_a_body_that_trickles_in_is_refused_with_408_and_the_connection_closed(edge: Edge) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.server.port)
    try:
        body = b'{"text": "Good evening."}'
        writer.write(
            b"POST /say HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body[:3]
        )
        began = time.monotonic()
        async with asyncio.timeout(5):
            status = await read_response(reader)
            assert status.startswith(b"HTTP/1.1 408"), status
            assert time.monotonic() - began < 3
            assert await reader.read() == b"", "the server closes the connection after its answer"
        status_code, _ = await post(edge.url, "/say", json={"text": "Good evening."})
        assert status_code == 202, "a prompt client is served as before"
    finally:
        writer.close()


async def test_metrics_count_viewers_and_lines_and_health_says_ready(edge: Edge) -> None:
    async def scrape() -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(f"{edge.url}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
        return {
            name: float(value)
            for line in text.splitlines()
            if line and not line.startswith("#")
            for name, value in [line.rsplit(" ", 1)]
        }

    before = await scrape()
    assert before['anchor_viewers{session="main"}'] == 0
    assert before["anchor_ready"] == 1 and before["anchor_draining"] == 0
    viewer = await connect(edge.url)
    try:
        await until(lambda: len(viewer.video) > 5)
        status, reply = await post(edge.url, "/say", json={"text": "Good evening, and welcome to the news."})
        assert status == 202, reply
        during = await scrape()
        assert during['anchor_viewers{session="main"}'] == 1
        assert during['anchor_live_utterances{session="main"}'] == 1
        await edge.session.outcome(reply["utterance"])
        after = await scrape()
        assert after['anchor_utterances_total{outcome="done"}'] >= 1
        assert after['anchor_live_utterances{session="main"}'] == 0
        assert after["anchor_first_audio_seconds_count"] >= 1
        assert any(name.startswith("anchor_stage_latency_seconds_bucket") for name in after)
    finally:
        await viewer.close()
    for path, code in (("/healthz", 200), ("/readyz", 200)):
        async with aiohttp.ClientSession() as http, http.get(f"{edge.url}{path}") as r:
            assert r.status == code and (await r.json())["ready"] is True


async def test_a_viewers_question_reaches_that_viewer_not_the_audience() -> None:
    authority = TokenAuthority(SECRET.encode())
    async with served_anchor(SIZE, responder=Responder({}, "off"), jwt_secret=SECRET, dev_open=False) as edge:
        ana = await connect(edge.url, token=authority.issue("ana", "main", {"watch", "talk"}))
        bob = await connect(edge.url, token=authority.issue("bob", "main", {"watch"}))
        try:
            await until(lambda: ana.messages_open() and bob.messages_open())
            headers = {"Authorization": f"Bearer {authority.issue('ana', 'main', {'talk'})}"}
            status, reply = await post(
                edge.url, "/ask", json={"text": "Is my account safe?"}, headers=headers
            )
            assert status == 202, reply
            asked = reply["utterance"]

            def ended(viewer: Viewer) -> bool:
                return any(
                    m["kind"] == "utterance_finished" and m["utterance"] == asked for m in viewer.messages
                )

            await until(lambda: ended(ana) and ended(bob))
        finally:
            await ana.close()
            await bob.close()
    assert [m["detail"] for m in ana.messages if m["kind"] == "question"] == ["Is my account safe?"]
    assert not [m for m in bob.messages if m["kind"] == "question"], "bob is not shown ana's question"


@pytest.mark.parametrize("edge", [{"jwt_secret": SECRET, "dev_open": False}], indirect=True)
async def test_a_viewer_can_be_closed_only_by_its_own_token_or_an_operator(edge: Edge) -> None:
    authority = TokenAuthority(SECRET.encode())
    tokens = {name: authority.issue(name, "main", {"watch"}) for name in ("ana", "bob")}
    operator = authority.issue("desk", "main", {"watch", "control"})
    pcs, locations = [], {}
    try:
        async with aiohttp.ClientSession() as http:
            for name, token in tokens.items():
                pc, sdp = await offer_sdp()
                pcs.append(pc)
                headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
                async with http.post(f"{edge.url}/whep/main", data=sdp, headers=headers) as r:
                    assert r.status == 201
                    locations[name] = r.headers["Location"]
            assert all(len(where.rsplit("/", 1)[1]) >= 16 for where in locations.values()), (
                "ids are unguessable"
            )
            as_bob = {"Authorization": f"Bearer {tokens['bob']}"}
            async with http.delete(f"{edge.url}{locations['ana']}", headers=as_bob) as r:
                assert r.status == 403 and "is not 'bob'" in (await r.json())["error"]
            assert len(edge.server.peers) == 2
            async with http.delete(f"{edge.url}{locations['bob']}", headers=as_bob) as r:
                assert r.status == 200
            async with http.delete(
                f"{edge.url}{locations['ana']}", headers={"Authorization": f"Bearer {operator}"}
            ) as r:
                assert r.status == 200
    finally:
        for pc in pcs:
            await close_pc(pc)
    assert not edge.server.peers


async def test_a_question_to_a_session_that_cannot_answer_is_refused_and_leaves_nothing(edge: Edge) -> None:
    events = edge.session.events()
    status, reply = await post(edge.url, "/ask", json={"text": "who are you?"})
    assert status == 409
    assert reply["error"].startswith("session 'main' does not answer questions: no root stage accepts Ask")
    assert not edge.session.utterances.live()
    kinds = []
    while len(kinds) < 3 and (event := await asyncio.wait_for(events.next(), 5)) is not None:
        kinds.append((event.kind, event.detail))
    events.close()
    assert kinds[-1] == ("utterance_finished", "error")


@pytest.mark.parametrize(
    "edge", [{"offers_per_minute": 3, "cors_origins": ["https://news.example"]}], indirect=True
)
async def test_rate_limit_and_cors_allow_list(edge: Edge) -> None:
    garbage = [(await post(edge.url, "/offer", data=b"[]"))[0] for _ in range(40)]
    assert set(garbage) == {400}, "bad requests are refused, and cost an honest client nothing"
    viewer = await connect(edge.url)  # the same address still gets its offer answered
    await viewer.close()
    replies = [await post(edge.url, "/say", json={"text": "hello"}) for _ in range(3)]
    assert [status for status, _ in replies] == [202, 202, 429], "the offer was the first of three"
    assert "too many requests from 127.0.0.1 as 'anonymous'; limit 3/min" in replies[-1][1]["error"]
    async with (
        aiohttp.ClientSession() as http,
        http.options(
            f"{edge.url}/say",
            headers={"Origin": "https://news.example", "Access-Control-Request-Method": "POST"},
        ) as response,
    ):
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://news.example"


async def test_whep_player_joins_and_leaves(edge: Edge) -> None:
    pc, sdp = await offer_sdp()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{edge.url}/whep/main", data=sdp, headers={"Content-Type": "application/sdp"}
            ) as r:
                assert r.status == 201 and r.content_type == "application/sdp"
                location, answer = r.headers["Location"], await r.text()
            assert location.startswith("/whep/main/") and answer.startswith("v=0")
            assert len(edge.server.peers) == 1
            async with http.delete(f"{edge.url}{location}") as r:
                assert r.status == 200
            async with http.post(
                f"{edge.url}/whep/main", data=sdp, headers={"Content-Type": "text/plain"}
            ) as r:
                assert r.status == 415
    finally:
        await close_pc(pc)
    assert not edge.server.peers


async def test_shutdown_refuses_new_offers_and_closes_peers(edge: Edge) -> None:
    viewer = await connect(edge.url)
    try:
        await until(lambda: len(viewer.video) >= 5)
        edge.server.draining = True
        _, sdp = await offer_sdp()
        status, reply = await post(edge.url, "/offer", json={"sdp": sdp, "type": "offer"})
        assert (status, reply["error"]) == (503, "the server is shutting down")
        await edge.server.close()
        assert not edge.server.peers
        await until(lambda: all(t.done() for t in viewer.tasks), 10)
    finally:
        await viewer.close()


class Ears(Stage):
    """Where a viewer's microphone arrives (the recognizer's place in a real anchor)."""

    accepts = (AudioChunk,)

    def __init__(self) -> None:
        super().__init__("ears")
        self.heard: list[AudioChunk] = []

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if isinstance(frame, AudioChunk):
            self.heard.append(frame)
        return
        yield frame


async def test_the_viewer_microphone_reaches_the_session_and_h264_is_negotiated() -> None:
    ears = Ears()
    async with served_anchor(SIZE, ears=ears) as edge:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        video = pc.addTransceiver("video", direction="recvonly")
        video.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        )
        pc.addTransceiver(
            Microphone(np.sin(2 * np.pi * 440 * np.arange(48000 * 20) / 48000) * 0.4), direction="sendrecv"
        )
        frames: list[av.VideoFrame] = []
        tasks: list[asyncio.Task[None]] = []

        @pc.on("track")
        def _track(track: Any) -> None:
            if track.kind == "video":
                tasks.append(asyncio.get_running_loop().create_task(_collect(track, frames)))

        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        status, body = await post(edge.url, "/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})
        assert status == 200, body
        assert "H264/90000" in body["sdp"] and "VP8/90000" not in body["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
        try:
            await until(lambda: len(frames) >= 10 and len(ears.heard) >= 50)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await close_pc(pc)
    heard = np.concatenate([c.pcm for c in ears.heard[-25:]])
    assert ears.heard[0].sample_rate == 48000
    spectrum = np.abs(np.fft.rfft(heard))
    assert abs(np.argmax(spectrum) * 48000 / len(heard) - 440) < 5, "the viewer's tone arrives as sent"


def test_settings_refuse_open_or_weak_secrets_off_loopback() -> None:
    with pytest.raises(ValueError, match="is not loopback: set jwt_secret"):
        WebRtcSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        WebRtcSettings(jwt_secret="short")  # type: ignore[arg-type]
    assert not WebRtcSettings(host="0.0.0.0", jwt_secret=SECRET).open_access  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a username and a credential"):
        WebRtcSettings(ice_servers=[{"urls": ["turn:turn.example:3478"]}])  # type: ignore[list-item]


def test_bench_streams_reports_viewers_latency_mqtt_and_admission(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "streams", "--json", "--duration", "2", "--max-viewers", "1", "--latency-seconds", "2"]
    assert main([*args, "--mqtt-rounds", "12", "--admission-seconds", "2", "--max-admitted", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    admission = result["admission"]
    assert 1 <= admission["admitted"] <= 2 and admission["first_viewer_alone"]["fps"] > 0
    assert admission["refusal"] is None or admission["refusal"]["status"] == 503
    assert result["webrtc_latency_ms"]["n"] > 0 and result["webrtc_latency_ms"]["p50"] > 0
    assert result["viewer_steps"][0]["viewers"] == 1 and result["viewer_steps"][0]["min_fps"] > 0
    mqtt = result["mqtt_round_trip_ms"]
    assert "skipped" in mqtt or mqtt["p50"] > 0


async def test_cpu_load_is_this_process_share_of_its_cpus() -> None:
    began, frozen = time.monotonic(), [None]

    def cpu_time() -> float:  # 1.5 CPU-seconds every wall second (three quarters of two CPUs), then idle
        busy = 1.5 * (time.monotonic() - began)
        return busy if frozen[0] is None else frozen[0]

    gauge = CpuLoad(window_s=0.1, every_s=0.02, cpu_time=cpu_time, cpus=2)
    gauge.start()
    try:
        await asyncio.sleep(0.5)
        assert 0.65 < gauge() < 0.85, gauge()
        frozen[0] = cpu_time()
        await asyncio.sleep(0.5)
        assert gauge() < 0.1, gauge()
    finally:
        await gauge.stop()


async def test_recent_rate_is_how_fast_a_count_rose_over_its_window() -> None:
    count = [0]
    rate = RecentRate(lambda: count[0], window_s=0.3, every_s=0.02)
    rate.start()
    try:
        await asyncio.sleep(0.1)
        assert rate() == 0
        for _ in range(20):  # 100 a second
            count[0] += 2
            await asyncio.sleep(0.02)
        assert 50 < rate() < 150, rate()
        await asyncio.sleep(0.5)  # no more: the window forgets
        assert rate() == 0
    finally:
        await rate.stop()


def test_the_machines_busy_time_is_read_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text("cpu  400 100 300 9000 500 50 50 100 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert host_busy_seconds(str(stat)) == pytest.approx(1000 / os.sysconf("SC_CLK_TCK"))
    assert host_busy_seconds(str(tmp_path / "missing")) == 0.0
    assert host_busy_seconds() > 0, "this Linux machine has a /proc/stat"


def test_admission_predicts_the_next_viewers_cost_and_counts_recent_joins() -> None:
    now = [0.0]
    gate = ViewerAdmission(0.8, 1.0, window_s=5.0, first_guess=0.05, clock=lambda: now[0])
    assert gate.refusal(0, 0.10, 0.0) is None, "the first viewer always comes in (the idle load is noted)"
    gate.admitted()
    now[0] = 1.0
    assert gate.refusal(1, 0.10, 0.0) is None, "0.10 + 2 x 0.05 (itself and one unseen join)"
    gate.admitted()
    now[0] = 10.0  # settled: both viewers show in the load, 0.10 each
    assert gate.refusal(2, 0.30, 0.0) is None and gate.cost == pytest.approx(0.10)
    gate.admitted()
    now[0] = 11.0
    for _ in range(4):  # a burst: each join still unseen counts at the learned cost
        gate.admitted()
    why = gate.refusal(7, 0.30, 0.0)  # 0.30 + 0.10 x (1 + 5 unseen)
    assert why is not None and "10.0% more per viewer" in why, why
    now[0] = 20.0
    assert gate.refusal(7, 0.65, 0.0) is None, "0.65 + 0.55 / 7 < 0.8"
    why = gate.refusal(7, 0.75, 0.0)
    assert why is not None and "below 80%" in why, "the next viewer would take the load past the line"
    why = gate.refusal(1, 0.2, 3.0)
    assert why is not None and "drop 3.0 video frames/s" in why
