"""The WebRTC edge: a viewer page, ``POST /offer`` signaling and WHEP, over aiohttp and aiortc.

Every viewer gets its own peer connection and its own copy of the session's
paced output (so a slow viewer drops its own oldest video frames and never
holds up the others). With the ``talk`` grant, the viewer's microphone goes
into the session's input (its speech recognizer); session events (captions,
utterance starts and ends) go to the page over a data channel.

Bad requests change nothing: the body is bounded, the JSON and the SDP are
checked before any peer connection exists, and each failure is a 4xx with a
message that says what was wrong.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import CollectorRegistry, generate_latest

from anchor.core.aio import cancel_and_wait
from anchor.core.commands import (
    Ask,
    Command,
    CommandError,
    Interrupt,
    NewsEnqueue,
    Say,
    build,
    decode_object,
)
from anchor.core.frames import AudioChunk
from streams.admission import MachineLoad, RecentRate, ViewerAdmission
from streams.aiortc_compat import allow_loopback_candidates, tasks_of
from streams.auth import AuthError, Claims, Grant, TokenAuthority
from streams.fanout import FanoutUnavailable, JanusPublisher
from streams.http_edge import RequestError, cors, errors, open_to, preflight, read_body, viewer_page
from streams.janus import JanusError
from streams.observability import ServerCollector
from streams.settings import WebRtcSettings, is_loopback
from streams.slow_clients import with_header_deadline
from streams.tracks import ProgramAudioTrack, ProgramFeed, ProgramVideoTrack, pump_microphone

log = logging.getLogger(__name__)

OPEN_GRANTS: frozenset[Grant] = frozenset({"watch", "talk", "control"})


class SessionEventLike(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def utterance_id(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def private(self) -> bool: ...

    @property
    def asker(self) -> str: ...


class EventFeed(Protocol):
    async def next(self) -> SessionEventLike | None: ...

    def close(self) -> None: ...


Feed = TypeVar("Feed", bound=ProgramFeed)
C = TypeVar("C", bound=Command)


class ProgramSource(Protocol[Feed]):
    """What the edge needs of an anchor session."""

    def subscribe(self, *, audio_ms: float, video_frames: int) -> Feed: ...

    def unsubscribe(self, feed: Feed, /) -> None: ...

    async def push(self, frame: AudioChunk) -> None: ...

    async def say(self, text: str) -> str: ...

    async def ask(self, question: str, *, asker: str = ...) -> str: ...

    def live_lines(self) -> int:
        """Lines queued or being spoken now."""
        ...

    def has_room(self) -> bool:
        """Whether a new line from outside (say, ask) may queue now."""
        ...

    async def interrupt(self, reason: str = ...) -> frozenset[str]: ...

    def events(self) -> EventFeed: ...


class Newsroom(Protocol):
    """A session's news queue, as the edge exposes it (``GET``/``POST /news``)."""

    async def submit(self, title: str, body: str, priority: int) -> tuple[str, bool]:
        """Queue an item; its id and whether it is new. ``ValueError`` for a bad item."""
        ...

    async def listing(self) -> dict[str, Any]: ...


@dataclass
class Peer:
    id: str
    session: str
    pc: RTCPeerConnection
    feed: ProgramFeed
    claims: Claims
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    video: bool = False  # it takes the program's video (an audio-only player's feed drops every frame)

    @property
    def dropped_video(self) -> int:
        return self.feed.dropped_video if self.video else 0


@dataclass
class FanoutViewer:
    """A viewer's subscription in the SFU, as this server relays it."""

    id: str
    session: str
    handle: int  # its Janus handle
    subject: str  # whose token asked for it
    timer: asyncio.TimerHandle | None = None  # drops it unless its answer comes in time


class RateLimiter:
    """A token bucket per key (the server keys it by client address and token subject): ``per_minute``
    requests, refilled continuously."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        tokens, since = self._buckets.get(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - since) * self.per_minute / 60)
        if len(self._buckets) > 10_000:  # forget idle clients: bounded memory
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


def parse_offer_json(raw: bytes, kind: str = "offer") -> tuple[str, str | None]:
    """``(sdp, session)`` from a ``{"sdp", "type": kind, "session"?}`` body, or ``RequestError(400)``."""
    try:
        body = decode_object(raw)
    except CommandError as exc:
        raise RequestError(400, str(exc)) from None
    extra = sorted(set(body) - {"sdp", "type", "session"})
    if extra:
        raise RequestError(400, f"unknown fields {extra}; allowed: sdp, type, session")
    if body.get("type") != kind:
        raise RequestError(400, f"type must be {kind!r}, got {body.get('type')!r}")
    sdp, session = body.get("sdp"), body.get("session")
    if not isinstance(sdp, str):
        raise RequestError(400, "sdp must be a string")
    if session is not None and (not isinstance(session, str) or not 0 < len(session) <= 64):
        raise RequestError(400, "session must be a string of 1..64 characters")
    return sdp, session


def check_sdp(sdp: str, kind: str = "offer") -> SessionDescription:
    """A parsed offer (or answer) for our media, or ``RequestError(400)`` naming the problem."""
    if not sdp.startswith("v=0"):
        raise RequestError(400, f"SDP {kind} must start with 'v=0'")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc's parser raises many kinds on garbage
        raise RequestError(400, f"malformed SDP {kind}: {type(exc).__name__}: {exc}") from None
    kinds = {m.kind for m in parsed.media}
    if not kinds & {"audio", "video"}:
        raise RequestError(400, f"SDP {kind} has no audio or video section (found {sorted(kinds) or 'none'})")
    for m in parsed.media:
        if m.kind not in ("audio", "video"):
            continue
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise RequestError(
                400, f"SDP {kind}'s {m.kind} section has no ICE credentials (ice-ufrag/ice-pwd)"
            )
        if m.dtls is None or not m.dtls.fingerprints:
            raise RequestError(
                400,
                f"SDP {kind}'s {m.kind} section has no DTLS fingerprint or setup (a=fingerprint, a=setup)",
            )
    return parsed


class WebRtcServer:
    """Serves ``sessions`` (id -> source) to browsers and WHEP players."""

    def __init__(
        self,
        settings: WebRtcSettings,
        sessions: Mapping[str, ProgramSource[Any]],
        *,
        default_session: str,
        on_event: Callable[[str, str], Awaitable[None]] | None = None,
        newsrooms: Mapping[str, Newsroom] | None = None,
        load: Callable[[], float] | None = None,
        drops: Callable[[], float] | None = None,
        registry: CollectorRegistry | None = None,
        on_drain: Callable[[], None] | None = None,
        fanouts: Mapping[str, JanusPublisher] | None = None,
    ) -> None:
        """``load``: CPU load (0..1) for admission; by default measured (``MachineLoad``).
        ``drops``: video frames the viewers drop per second; by default measured (``RecentRate``).
        ``registry``: the Prometheus registry ``/metrics`` serves (the runtime's), which gets this
        server's gauges too. Sessions may be added after ``start`` (``add_session``): until the first
        one is, the server is live (``/healthz``) but not ready (``/readyz``). ``on_drain``: what the
        application stops besides this server when ``POST /drain`` comes (the server drains either way).
        ``fanouts``: sessions whose watching viewers subscribe through the SFU (``/fanout``)."""
        self.settings = settings
        self._cpu = None if load is not None else MachineLoad()
        self.load: Callable[[], float] = load or self._cpu or (lambda: 0.0)
        self._drop_rate = None if drops is not None else RecentRate(self.dropped_video)
        self.drops: Callable[[], float] = drops or self._drop_rate or (lambda: 0.0)
        self._dropped_by_gone = 0  # frames dropped by viewers who left
        self.admission = ViewerAdmission(settings.max_cpu_load, settings.admit_max_drops_per_s)
        self.sessions: dict[str, ProgramSource[Any]] = dict(sessions)
        self.newsrooms: dict[str, Newsroom] = dict(newsrooms or {})
        self.registry = registry
        self.fanouts: dict[str, JanusPublisher] = {}
        self.fanout_viewers: dict[str, FanoutViewer] = {}
        for session_id, publisher in (fanouts or {}).items():
            self._fan_out(session_id, publisher)
        self.on_drain = on_drain
        self.default_session = default_session
        secret = settings.jwt_secret.get_secret_value().encode() if settings.jwt_secret else None
        self.tokens = TokenAuthority(secret) if secret else None
        self.limiter = RateLimiter(settings.offers_per_minute)
        self.peers: dict[str, Peer] = {}
        self.draining = False
        self._background: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        if registry is not None:  # after the state it reads: registering collects once
            registry.register(ServerCollector(self))
        self.app = web.Application(
            client_max_size=settings.max_body_bytes, middlewares=[cors(settings), errors(settings)]
        )
        self.app.add_routes(
            [
                web.get("/", viewer_page),
                web.get("/config", self._config),
                web.get("/healthz", self._health),
                web.get("/readyz", self._ready),
                web.get("/metrics", self._metrics),
                web.post("/drain", self._drain),
                web.post("/offer", self._offer),
                web.options("/offer", preflight),
                web.post("/whep/{session}", self._whep),
                web.options("/whep/{session}", preflight),
                web.delete("/whep/{session}/{peer}", self._whep_delete),
                web.post("/fanout/{session}", self._fanout_subscribe),
                web.post("/fanout/{session}/{viewer}", self._fanout_answer),
                web.delete("/fanout/{session}/{viewer}", self._fanout_leave),
                web.post("/say", self._say),
                web.options("/say", preflight),
                web.post("/interrupt", self._interrupt),
                web.options("/interrupt", preflight),
                web.post("/ask", self._ask),
                web.options("/ask", preflight),
                web.get("/news", self._news),
                web.post("/news", self._news_submit),
                web.options("/news", preflight),
            ]
        )

    # -- lifecycle -----------------------------------------------------------------
    def add_session(
        self,
        session_id: str,
        source: ProgramSource[Any],
        newsroom: Newsroom | None = None,
        fanout: JanusPublisher | None = None,
    ) -> None:
        self.sessions[session_id] = source
        if newsroom is not None:
            self.newsrooms[session_id] = newsroom
        if fanout is not None:
            self._fan_out(session_id, fanout)

    async def remove_session(self, session_id: str) -> None:
        """Stop serving ``session_id``: its viewers are closed (they join again wherever it goes next)."""
        self.sessions.pop(session_id, None)
        self.newsrooms.pop(session_id, None)
        await asyncio.gather(
            *(self.close_peer(p.id) for p in list(self.peers.values()) if p.session == session_id)
        )

    def _fan_out(self, session_id: str, publisher: JanusPublisher) -> None:
        self.fanouts[session_id] = publisher

        def gone(handle: int) -> None:
            for viewer in [v for v in self.fanout_viewers.values() if v.session == session_id]:
                if viewer.handle == handle:
                    self.fanout_viewers.pop(viewer.id, None)
                    if viewer.timer is not None:
                        viewer.timer.cancel()

        publisher.on_viewer_gone = gone

    @property
    def ready(self) -> bool:
        """Takes new viewers and commands: not draining, and the default session (if it has one: a
        cluster worker has none) is open."""
        return not self.draining and (not self.default_session or self.default_session in self.sessions)

    def viewers(self) -> dict[str, int]:
        counts = dict.fromkeys(self.sessions, 0)
        for peer in self.peers.values():
            counts[peer.session] = counts.get(peer.session, 0) + 1
        return counts

    def fanout_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.fanouts, 0)
        for viewer in self.fanout_viewers.values():
            counts[viewer.session] = counts.get(viewer.session, 0) + 1
        return counts

    def dropped_video(self) -> int:
        """Video frames dropped by every viewer so far, those gone included (it only grows)."""
        return self._dropped_by_gone + sum(peer.dropped_video for peer in self.peers.values())

    def live_lines(self) -> dict[str, int]:
        return {name: source.live_lines() for name, source in self.sessions.items()}

    def drain(self) -> None:
        """Refuse new viewers and commands (503, and ``/readyz`` says so); viewers here keep watching."""
        self.draining = True
        if self.on_drain is not None:
            self.on_drain()

    async def start(self) -> None:
        if is_loopback(self.settings.host):
            allow_loopback_candidates()
        if self._cpu is not None:
            self._cpu.start()
        if self._drop_rate is not None:
            self._drop_rate.start()
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.settings.keepalive_timeout_s
        )
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None, "set up by AppRunner.setup()"
        # Our own listener (not a TCPSite), so each connection's protocol gets a header deadline.
        self._listener = await asyncio.get_running_loop().create_server(
            with_header_deadline(handlers, self.settings.header_timeout_s),
            self.settings.host,
            self.settings.port,
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def close(self) -> None:
        """New offers get 503; every live peer is closed; the listener stops."""
        self.draining = True
        await asyncio.gather(*(self.close_peer(pid) for pid in list(self.peers)))
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._cpu is not None:
            await self._cpu.stop()
        if self._drop_rate is not None:
            await self._drop_rate.stop()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- pages -------------------------------------------------------------------------
    async def _config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "iceServers": [s.public() for s in self.settings.ice_servers],
                "session": self.default_session,
                "open": open_to(self.settings, request),
                "fanout": sorted(self.fanouts),
            }
        )

    def _state(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "peers": len(self.peers),
            "sessions": sorted(self.sessions),
            "draining": self.draining,
            "cpu_load": round(self.load(), 3),
            "viewer_drops_per_s": round(self.drops(), 2),
            "live_lines": sum(self.live_lines().values()),
        }

    async def _health(self, request: web.Request) -> web.StreamResponse:
        """Liveness: the process answers (models may still be loading; see ``/readyz``)."""
        return web.json_response(self._state())

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        """Readiness: 200 while new viewers are taken, 503 while starting or draining."""
        return web.json_response(self._state(), status=200 if self.ready else 503)

    async def _drain(self, request: web.Request) -> web.StreamResponse:
        """Start a drain (a Kubernetes preStop hook, ``anchor drain``): from this machine's loopback, or
        with an operator's token (``control``) for the default session."""
        if not is_loopback(request.remote or ""):
            self._claims(request, self.default_session, "control")
        if not self.draining:
            log.info("drain asked for by %s", request.remote)
            self.drain()
        return web.json_response(self._state(), status=202)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if self.registry is None:
            raise RequestError(404, "this server has no metrics registry")
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    # -- signaling ---------------------------------------------------------------------
    def _admit(
        self,
        request: web.Request,
        session: str,
        need: Grant = "watch",
        *,
        joining: bool = False,
        charge: bool = True,
    ) -> tuple[ProgramSource[Any], Claims]:
        """The session and the caller's claims, or a 4xx. Only an admitted request is charged to the
        caller's rate limit (its address and subject): bad requests, refused before any work, cost an
        honest client nothing."""
        source = self.sessions.get(session)
        if source is None and not self.ready:
            raise RequestError(503, "the anchor is starting (models loading)", retry_after_s=5)
        if source is None:
            raise RequestError(404, f"no session {session!r}; live: {sorted(self.sessions)}")
        claims = self._claims(request, session, need)
        client = self._client(request)
        if charge and not self.limiter.allow(f"{client} {claims.subject}"):
            raise RequestError(
                429,
                f"too many requests from {client} as {claims.subject!r}; "
                f"limit {self.settings.offers_per_minute}/min",
                retry_after_s=60 // self.settings.offers_per_minute or 1,
            )
        if joining and len(self.peers) >= self.settings.max_peers:
            raise RequestError(
                503, f"viewer limit reached ({self.settings.max_peers} peers)", retry_after_s=10
            )
        return source, claims

    def _room_for(self, offer: SessionDescription) -> None:
        """A viewer who takes video is an encode here: admitted only while the measured capacity allows
        (``ViewerAdmission``). One who only listens costs a small fraction of that and is bounded by
        ``max_peers`` alone."""
        if "video" not in {m.kind for m in offer.media}:
            return
        watching = sum(peer.video for peer in self.peers.values())
        if why := self.admission.refusal(watching, self.load(), self.drops()):
            raise RequestError(503, f"{why}; the viewers already here keep their stream", retry_after_s=5)

    def _client(self, request: web.Request) -> str:
        """The client's address: a trusted proxy's (a cluster gateway's) ``X-Forwarded-For`` names it."""
        remote = request.remote or "?"
        forwarded = request.headers.get("X-Forwarded-For")
        if forwarded and self._trusted(remote):
            return forwarded.split(",")[-1].strip() or remote
        return remote

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.settings.trusted_proxies)

    def _claims(self, request: web.Request, session: str, need: Grant) -> Claims:
        if open_to(
            self.settings, request
        ):  # loopback dev server, local page: tokens are not needed, so not checked
            return Claims("anonymous", session, OPEN_GRANTS, float("inf"))
        if self.tokens is not None:
            return self.tokens.verify(request.headers.get("Authorization"), session=session, need=need)
        if self.settings.open_access:
            raise AuthError(
                f"open access is only for pages on a loopback name, not {request.host!r}; "
                "list it in webrtc.open_hosts or use a token"
            )
        raise AuthError("this server takes no offers: it has no token secret and is not loopback-only")

    async def _offer(self, request: web.Request) -> web.StreamResponse:
        sdp, session = parse_offer_json(await read_body(request, self.settings, draining=self.draining))
        session = session or self.default_session
        source, claims = self._admit(request, session, joining=True)
        self._room_for(check_sdp(sdp))
        peer = await self._connect(session, source, claims, sdp)
        assert peer.pc.localDescription is not None
        return web.json_response({"sdp": peer.pc.localDescription.sdp, "type": "answer", "peer": peer.id})

    async def _command(self, request: web.Request, schema: type[C]) -> tuple[str, C]:
        """The session (``session`` field, or the default) and the command of a JSON body, or a 400."""
        raw = await read_body(request, self.settings, draining=self.draining)
        try:
            fields = decode_object(raw) if raw.strip() else {}
            session = fields.pop("session", None) or self.default_session
            if not isinstance(session, str) or len(session) > 64:
                raise CommandError("session must be a string of 1..64 characters")
            return session, build(schema, fields)
        except CommandError as exc:
            raise RequestError(400, str(exc)) from None

    async def _say(self, request: web.Request) -> web.StreamResponse:
        session, command = await self._command(request, Say)
        source, _ = self._admit(request, session, need="control")
        self._room(session, source)
        utterance = await source.say(command.text)
        return web.json_response({"utterance": utterance}, status=202)

    async def _interrupt(self, request: web.Request) -> web.StreamResponse:
        session, command = await self._command(request, Interrupt)
        source, claims = self._admit(request, session, need="control")
        cut = await source.interrupt(command.reason or f"http:{claims.subject}")
        return web.json_response({"interrupted": sorted(cut)})

    async def _ask(self, request: web.Request) -> web.StreamResponse:
        session, command = await self._command(request, Ask)
        source, claims = self._admit(request, session, need="talk")
        self._room(session, source)
        try:
            utterance = await source.ask(command.text, asker=claims.subject)
        except ValueError as exc:  # the session's graph has no responder for questions
            raise RequestError(409, f"session {session!r} does not answer questions: {exc}") from None
        return web.json_response({"utterance": utterance}, status=202)

    @staticmethod
    def _room(session: str, source: ProgramSource[Any]) -> None:
        if not source.has_room():
            raise RequestError(
                503,
                f"session {session!r} holds as many lines as it may; try again shortly",
                retry_after_s=2,
            )

    def _newsroom(self, session: str) -> Newsroom:
        room = self.newsrooms.get(session)
        if room is None:
            raise RequestError(404, f"session {session!r} has no news queue")
        return room

    async def _news(self, request: web.Request) -> web.StreamResponse:
        session = request.query.get("session") or self.default_session
        self._admit(request, session, need="watch", charge=False)
        return web.json_response(await self._newsroom(session).listing())

    async def _news_submit(self, request: web.Request) -> web.StreamResponse:
        session, command = await self._command(request, NewsEnqueue)
        self._admit(request, session, need="control")
        room = self._newsroom(session)
        try:
            item, added = await room.submit(command.title, command.body, command.priority)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None
        return web.json_response({"id": item, "queued": added}, status=201 if added else 200)

    async def _whep(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/sdp":
            raise RequestError(415, f"WHEP offers are application/sdp, got {request.content_type!r}")
        raw = await read_body(request, self.settings, draining=self.draining)
        try:
            sdp = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "SDP offer is not UTF-8") from None
        session = request.match_info["session"]
        source, claims = self._admit(request, session, joining=True)
        self._room_for(check_sdp(sdp))
        peer = await self._connect(session, source, claims, sdp)
        assert peer.pc.localDescription is not None
        return web.Response(
            status=201,
            text=peer.pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whep/{session}/{peer.id}"},
        )

    # -- fan-out through the SFU --------------------------------------------------------
    async def _fanout_subscribe(self, request: web.Request) -> web.StreamResponse:
        """A watching viewer's subscription in the SFU: Janus's offer, answered at ``/fanout/{s}/{viewer}``.
        No CPU admission: the SFU carries the media, this process only relays two messages."""
        if self.draining:
            raise RequestError(503, "the server is shutting down", retry_after_s=5)
        session = request.match_info["session"]
        _, claims = self._admit(request, session)
        publisher = self.fanouts.get(session)
        if publisher is None:
            raise RequestError(404, f"session {session!r} is not fanned out; use /offer")
        if len(self.fanout_viewers) >= self.settings.max_fanout_viewers:
            limit = self.settings.max_fanout_viewers
            raise RequestError(503, f"fan-out limit reached ({limit})", retry_after_s=10)
        try:
            handle, offer = await publisher.subscribe()
        except FanoutUnavailable as exc:
            raise RequestError(503, str(exc), retry_after_s=2) from None
        except JanusError as exc:
            raise RequestError(502, f"the SFU refused the subscription: {exc}") from None
        viewer = FanoutViewer(secrets.token_urlsafe(12), session, handle, claims.subject)
        self.fanout_viewers[viewer.id] = viewer
        viewer.timer = asyncio.get_running_loop().call_later(
            self.settings.connect_timeout_s,
            lambda: self._spawn(self._fanout_expire(viewer), f"{viewer.id}:expire"),
        )
        return web.json_response(
            {"viewer": viewer.id, "type": "offer", "sdp": offer["sdp"]},
            status=201,
            headers={"Location": f"/fanout/{session}/{viewer.id}"},
        )

    def _fanout_viewer(self, request: web.Request) -> tuple[FanoutViewer, JanusPublisher]:
        viewer = self.fanout_viewers.get(request.match_info["viewer"])
        publisher = self.fanouts.get(request.match_info["session"])
        if viewer is None or publisher is None or viewer.session != request.match_info["session"]:
            raise RequestError(404, f"no fan-out viewer {request.match_info['viewer']!r} in this session")
        claims = self._claims(request, viewer.session, "watch")
        if claims.subject != viewer.subject and "control" not in claims.grants:
            raise AuthError(f"viewer {viewer.id!r} is not {claims.subject!r}'s", status=403)
        return viewer, publisher

    async def _fanout_answer(self, request: web.Request) -> web.StreamResponse:
        raw = await read_body(request, self.settings, draining=self.draining)
        viewer, publisher = self._fanout_viewer(request)
        sdp, _ = parse_offer_json(raw, "answer")
        check_sdp(sdp, "answer")
        if viewer.timer is not None:
            viewer.timer.cancel()
            viewer.timer = None
        try:
            await publisher.start_viewer(viewer.handle, {"type": "answer", "sdp": sdp})
        except (FanoutUnavailable, JanusError) as exc:
            self.fanout_viewers.pop(viewer.id, None)
            raise RequestError(502, f"the SFU did not take the answer: {exc}; subscribe again") from None
        return web.json_response({"viewer": viewer.id})

    async def _fanout_leave(self, request: web.Request) -> web.StreamResponse:
        viewer, publisher = self._fanout_viewer(request)
        await self._fanout_drop(viewer, publisher)
        return web.Response(status=200)

    async def _fanout_expire(self, viewer: FanoutViewer) -> None:
        """A subscription whose viewer never answered gives its place back."""
        publisher = self.fanouts.get(viewer.session)
        if viewer.id in self.fanout_viewers and publisher is not None:
            log.info("fan-out viewer %s never answered; dropped", viewer.id)
            await self._fanout_drop(viewer, publisher)

    async def _fanout_drop(self, viewer: FanoutViewer, publisher: JanusPublisher) -> None:
        self.fanout_viewers.pop(viewer.id, None)
        if viewer.timer is not None:
            viewer.timer.cancel()
        await publisher.leave(viewer.handle)

    async def _whep_delete(self, request: web.Request) -> web.StreamResponse:
        peer = self.peers.get(request.match_info["peer"])
        if peer is None or peer.session != request.match_info["session"]:
            raise RequestError(
                404, f"no viewer {request.match_info['peer']!r} in session {request.match_info['session']!r}"
            )
        claims = self._claims(request, peer.session, "watch")
        if claims.subject != peer.claims.subject and "control" not in claims.grants:
            raise AuthError(f"viewer {peer.id!r} is not {claims.subject!r}'s to close", status=403)
        await self.close_peer(peer.id)
        return web.Response(status=200)

    async def _connect(self, session: str, source: ProgramSource[Any], claims: Claims, sdp: str) -> Peer:
        ice = [
            RTCIceServer(
                urls=s.urls,
                username=s.username,
                credential=s.credential.get_secret_value() if s.credential else None,
            )
            for s in self.settings.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        feed = source.subscribe(
            audio_ms=self.settings.audio_ms_buffered, video_frames=self.settings.video_frames_buffered
        )
        peer = Peer(secrets.token_urlsafe(12), session, pc, feed, claims)
        self.peers[peer.id] = peer
        try:
            await self._wire(peer, source)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            kinds = {t.kind for t in pc.getTransceivers()}
            if "audio" in kinds:
                pc.addTrack(ProgramAudioTrack(feed))
            if "video" in kinds:
                pc.addTrack(ProgramVideoTrack(feed))
                peer.video = True
                self.admission.admitted()
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on an offer it cannot answer
            await self.close_peer(peer.id)
            raise RequestError(400, f"offer could not be answered: {type(exc).__name__}: {exc}") from None
        peer.tasks.append(
            asyncio.get_running_loop().create_task(self._unless_connected(peer), name=f"{peer.id}:deadline")
        )
        log.info("viewer %s joined session %s as %s", peer.id, session, claims.subject)
        return peer

    async def _unless_connected(self, peer: Peer) -> None:
        """Close a viewer whose connection is not up ``connect_timeout_s`` after its answer: an offer
        that never connects must not hold a viewer's place."""
        await asyncio.sleep(self.settings.connect_timeout_s)
        if peer.pc.connectionState != "connected":
            log.info("viewer %s did not connect in time; closing it", peer.id)
            self._spawn(self.close_peer(peer.id), f"{peer.id}:close")

    async def _wire(self, peer: Peer, source: ProgramSource[Any]) -> None:
        pc = peer.pc
        loop = asyncio.get_running_loop()

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._spawn(self.close_peer(peer.id), f"{peer.id}:close")

        @pc.on("track")
        def _track(track: Any) -> None:
            if track.kind == "audio" and "talk" in peer.claims.grants:
                peer.tasks.append(
                    loop.create_task(pump_microphone(track, source.push), name=f"{peer.id}:mic")
                )

        @pc.on("datachannel")
        def _channel(channel: Any) -> None:
            peer.tasks.append(
                loop.create_task(self._send_events(channel, source, peer.claims), name=f"{peer.id}:events")
            )

    def _shown_to(self, claims: Claims, event: SessionEventLike) -> bool:
        """Whether a viewer with ``claims`` sees ``event``: private ones (a viewer's question or speech)
        only reach their asker, or, when no one is known (a microphone), the viewers who may talk;
        ``webrtc.show_questions`` shows them to everyone."""
        if not event.private or self.settings.show_questions:
            return True
        if event.asker:
            return claims.subject == event.asker
        return "talk" in claims.grants

    async def _send_events(self, channel: Any, source: ProgramSource[Any], claims: Claims) -> None:
        events = source.events()
        try:
            while (event := await events.next()) is not None:
                if not self._shown_to(claims, event):
                    continue
                if channel.readyState != "open":
                    if channel.readyState in ("closing", "closed"):
                        return
                    continue
                channel.send(
                    json.dumps({"kind": event.kind, "utterance": event.utterance_id, "detail": event.detail})
                )
        finally:
            events.close()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """A server-owned background task: awaited on ``close()``, failures logged."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("%s failed: %r", t.get_name(), t.exception())

        task.add_done_callback(done)

    async def close_peer(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        self._dropped_by_gone += peer.dropped_video
        await cancel_and_wait(peer.tasks, 2.0)
        source = self.sessions.get(peer.session)
        if source is not None:
            source.unsubscribe(peer.feed)
        await close_pc(peer.pc)
        log.info("viewer %s left session %s", peer.id, peer.session)


async def close_pc(pc: RTCPeerConnection, timeout_s: float = 2.0) -> None:
    """Close ``pc`` and wait for the tasks aiortc started for it (it never awaits its connect task)."""
    await pc.close()
    own = tasks_of(pc)
    if own:
        await asyncio.wait(own, timeout=timeout_s)
