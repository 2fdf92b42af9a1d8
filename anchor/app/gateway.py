"""``anchor gateway``: the cluster's front door. Stateless: run any number behind a load balancer.

It serves the viewer page and the API of ``anchor run`` (``/offer``, WHEP,
``/say``, ``/ask``, ``/interrupt``, ``/news``). For each request it finds the
worker holding the named session in the registry; when no worker holds it,
it asks the workers over MQTT (a start request with a v5 response topic) and
waits up to ``cluster.start_timeout_s``. The request then goes to that
worker as it came (token, body), with ``X-Forwarded-For``; the answer comes
back as the worker gave it. ICE goes straight to the worker (its own
address) or through TURN (``webrtc.ice_servers``, deploy/coturn).

Refusals are precise: 503 with ``Retry-After`` when no worker has room, when
the session is being moved (its worker stopped answering), or while the
broker or the database is out of reach. The gateway checks the caller's
token itself before asking for a session, so no one without a grant can
make the cluster start one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import aiomqtt
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from anchor.app.settings import AppSettings
from anchor.core.commands import CommandError, decode_object
from anchor.core.config import ConfigError
from anchor.news.database import Database, DatabaseError, open_database
from anchor.news.registry import SessionRegistry
from streams.auth import AuthError, Claims, Grant, TokenAuthority
from streams.cluster_bus import Bus, Requests, StartReply, StartRequest, Topics, WorkerStatus, decode, encode
from streams.http_edge import RequestError, cors, errors, open_to, preflight, read_body, viewer_page
from streams.server import OPEN_GRANTS, RateLimiter
from streams.slow_clients import with_header_deadline

log = logging.getLogger(__name__)

RELAYED_HEADERS = ("Content-Type", "Location", "Retry-After")
RELAY_CONNECT_S = 2.0
# Route -> (the grant it needs, whether it is charged to the caller's rate limit).
NEEDS: dict[str, tuple[Grant, bool]] = {
    "offer": ("watch", True),
    "whep": ("watch", True),
    "whep-delete": ("watch", False),
    "say": ("control", True),
    "interrupt": ("control", True),
    "ask": ("talk", True),
    "news": ("watch", False),
    "news-submit": ("control", True),
}


class Gateway:
    def __init__(self, settings: AppSettings, *, default_session: str = "main") -> None:
        if settings.mqtt.url is None:
            raise ConfigError("anchor gateway needs mqtt.url: the broker its workers listen on")
        self.settings = settings
        self.web = settings.webrtc
        self.cluster = settings.cluster
        self.default_session = default_session
        self.id = f"gw-{secrets.token_hex(4)}"
        self.topics = Topics(self.cluster)
        self.workers: dict[str, WorkerStatus] = {}
        self.requests = Requests()
        secret = self.web.jwt_secret.get_secret_value().encode() if self.web.jwt_secret else None
        self.tokens = TokenAuthority(secret) if secret else None
        self.limiter = RateLimiter(self.web.offers_per_minute)
        self.draining = False
        self.bus = Bus(
            settings.mqtt,
            client_id=self.id,
            keepalive_s=self.cluster.keepalive_s,
            subscriptions=lambda: [self.topics.statuses, self.topics.replies(self.id)],
            on_message=self._message,
        )
        self.metrics = CollectorRegistry()
        self.relays = Counter(
            "anchor_gateway_requests",
            "Requests relayed, by route and status.",
            ["route", "status"],
            registry=self.metrics,
        )
        self.relay_seconds = Histogram(
            "anchor_gateway_relay_seconds",
            "Time a relayed request spent at the worker (the gateway's own time excluded).",
            ["route"],
            registry=self.metrics,
        )
        self.starts = Histogram(
            "anchor_gateway_session_start_seconds",
            "From asking the workers to a session running.",
            registry=self.metrics,
        )
        online = Gauge("anchor_cluster_workers", "Workers online.", registry=self.metrics)
        online.set_function(lambda: float(sum(w.state == "online" for w in self.workers.values())))
        room = Gauge(
            "anchor_cluster_room", "Sessions the online workers can still start.", registry=self.metrics
        )
        room.set_function(lambda: float(self.room()))
        self._http: aiohttp.ClientSession | None = None
        self._db: Database | None = None  # opened by start()
        self._listener: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(
            client_max_size=self.web.max_body_bytes, middlewares=[cors(self.web), errors(self.web)]
        )
        self.app.add_routes(
            [
                web.get("/", viewer_page),
                web.get("/config", self._config),
                web.get("/healthz", self._health),
                web.get("/readyz", self._ready),
                web.get("/metrics", self._metrics),
                web.post("/offer", self._relay_json("offer")),
                web.post("/whep/{session}", self._whep),
                web.delete("/whep/{session}/{peer}", self._whep_delete),
                web.post("/say", self._relay_json("say")),
                web.post("/interrupt", self._relay_json("interrupt")),
                web.post("/ask", self._relay_json("ask")),
                web.get("/news", self._news),
                web.post("/news", self._relay_json("news-submit")),
                *(web.options(path, preflight) for path in ("/offer", "/say", "/interrupt", "/ask", "/news")),
                web.options("/whep/{session}", preflight),
            ]
        )

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        db = open_database(self.settings.news.database, timeout_s=self.cluster.database_timeout_s)
        try:
            await db.open()
        except DatabaseError as exc:
            raise ConfigError(str(exc)) from None
        self._db = db
        self.registry = SessionRegistry(db)
        # A worker cut off answers no SYN: give up on connecting long before the whole request's time. And
        # a connection per request (no keep-alive): a pooled one to a worker since cut off would wait for
        # the whole request's time instead (measured: a cut link took 17 s to fail over, not 6).
        timeout = aiohttp.ClientTimeout(total=self.cluster.relay_timeout_s, sock_connect=RELAY_CONNECT_S)
        self._http = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True))
        self.bus.start()
        self._runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.web.keepalive_timeout_s
        )
        await self._runner.setup()
        handlers = self._runner.server
        assert handlers is not None, "set up by AppRunner.setup()"
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                with_header_deadline(handlers, self.web.header_timeout_s),
                self.web.host,
                self.web.port,
                reuse_address=True,
            )
        except OSError as exc:
            await self.close()
            raise ConfigError(f"cannot serve on {self.web.host}:{self.web.port}: {exc.strerror}") from None

    @property
    def url(self) -> str:
        assert self._listener is not None
        return f"http://{self.web.host}:{self._listener.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        self.draining = True
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.bus.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._db is not None:
            await self._db.aclose()
            self._db = None

    # -- the workers -------------------------------------------------------------------
    async def _message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        if topic == self.topics.replies(self.id):
            reply = decode(StartReply, payload)
            correlation = getattr(message.properties, "CorrelationData", None)
            if reply is not None and correlation is not None:
                self.requests.resolve(bytes(correlation), reply)
        elif topic.endswith("/status"):
            status = decode(WorkerStatus, payload)
            if status is not None:
                self.workers[status.worker] = status

    def room(self) -> int:
        return sum(w.room for w in self.workers.values())

    async def locate(self, session: str, *, start: bool) -> str:
        """The URL of the worker holding ``session``; without one and with ``start``, the workers are asked
        to start it. A 503 (``RequestError``) says why not."""
        try:
            holding = await self.registry.lookup(session)
        except DatabaseError as exc:
            raise RequestError(503, f"the session registry is out of reach: {exc}", retry_after_s=2) from None
        if holding is not None and holding.live and holding.url:
            return holding.url
        if not start:
            raise RequestError(404, f"no session {session!r} is running")
        if not self.bus.connected.is_set():
            raise RequestError(503, "the gateway is not connected to the cluster's broker", retry_after_s=2)
        if self.room() <= 0:
            raise RequestError(503, f"no worker has room for session {session!r}", retry_after_s=5)
        began = time.perf_counter()
        key, future = self.requests.open()
        try:
            sent = await self.bus.publish(
                self.topics.start,
                encode(StartRequest(session=session)),
                response_topic=self.topics.replies(self.id),
                correlation=key,
            )
            if not sent:
                raise RequestError(503, "the cluster's broker is out of reach", retry_after_s=2)
            async with asyncio.timeout(self.cluster.start_timeout_s):
                reply = await future
        except TimeoutError:
            raise RequestError(
                503,
                f"no worker started session {session!r} within {self.cluster.start_timeout_s:g} s",
                retry_after_s=2,
            ) from None
        finally:
            self.requests.close(key)
        if not reply.ok:
            raise RequestError(503, reply.error, retry_after_s=2)
        self.starts.observe(time.perf_counter() - began)
        return reply.url

    # -- relaying ----------------------------------------------------------------------
    def _relay_json(self, route: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await self._read(request)
            try:
                fields = decode_object(body) if body.strip() else {}
            except CommandError as exc:
                raise RequestError(400, str(exc)) from None
            session = fields.get("session") or self.default_session
            if not isinstance(session, str) or not 0 < len(session) <= 64:
                raise RequestError(400, "session must be a string of 1..64 characters")
            return await self._relay(request, route, session, body)

        return handle

    async def _read(self, request: web.Request) -> bytes:
        return await read_body(request, self.web, draining=self.draining)

    async def _whep(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, "whep", request.match_info["session"], await self._read(request))

    async def _whep_delete(self, request: web.Request) -> web.StreamResponse:
        return await self._relay(request, "whep-delete", request.match_info["session"], b"", start=False)

    async def _news(self, request: web.Request) -> web.StreamResponse:
        session = request.query.get("session") or self.default_session
        return await self._relay(request, "news", session, b"")

    async def _relay(
        self, request: web.Request, route: str, session: str, body: bytes, *, start: bool = True
    ) -> web.StreamResponse:
        need, charged = NEEDS[route]
        claims = self._claims(request, session, need)
        client = request.remote or "?"
        if charged and not self.limiter.allow(f"{client} {claims.subject}"):
            raise RequestError(
                429,
                f"too many requests from {client}; limit {self.web.offers_per_minute}/min",
                retry_after_s=2,
            )
        url = await self.locate(session, start=start)
        try:
            response = await self._forward(request, url, route, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("gateway: worker %s for session %s did not answer: %r", url, session, exc)
            raise RequestError(
                503, f"session {session!r} is being moved to another worker; try again", retry_after_s=2
            ) from None
        self.relays.labels(route, str(response.status)).inc()
        return response

    async def _forward(self, request: web.Request, url: str, route: str, body: bytes) -> web.Response:
        assert self._http is not None
        headers = {
            name: request.headers[name]
            for name in ("Authorization", "Content-Type")
            if name in request.headers
        }
        forwarded = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded}, {request.remote}" if forwarded else str(request.remote)
        began = time.perf_counter()
        async with self._http.request(
            request.method, url + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            kept = {name: answer.headers[name] for name in RELAYED_HEADERS if name in answer.headers}
        self.relay_seconds.labels(route).observe(time.perf_counter() - began)
        return web.Response(status=answer.status, body=payload, headers=kept)

    # -- access --------------------------------------------------------------------------
    def _claims(self, request: web.Request, session: str, need: Grant) -> Claims:
        if open_to(self.web, request):
            return Claims("anonymous", session, OPEN_GRANTS, float("inf"))
        if self.tokens is None:
            raise AuthError("this gateway takes no requests: it has no token secret and is not loopback-only")
        return self.tokens.verify(request.headers.get("Authorization"), session=session, need=need)

    # -- pages and state -----------------------------------------------------------------
    async def _config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "iceServers": [s.public() for s in self.web.ice_servers],
                "session": self.default_session,
                "open": open_to(self.web, request),
                "fanout": [],
            }
        )

    def _state(self) -> dict[str, Any]:
        online = [w for w in self.workers.values() if w.state == "online"]
        return {
            "ready": self.ready,
            "gateway": self.id,
            "broker": self.bus.connected.is_set(),
            "workers": len(online),
            "room": self.room(),
            "sessions": sorted(s for w in online for s in w.sessions),
            "draining": self.draining,
        }

    @property
    def ready(self) -> bool:
        return self.bus.connected.is_set() and not self.draining

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._state())

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._state(), status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(self.metrics), headers={"Content-Type": CONTENT_TYPE_LATEST})


def run_gateway(settings: AppSettings, default_session: str = "main") -> int:
    """``anchor gateway``: serve until SIGTERM or Ctrl-C."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        gateway = Gateway(settings, default_session=default_session)
        await gateway.start()
        print(f"gateway {gateway.id} serving {gateway.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await gateway.close()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())
    print("gateway stopped", flush=True)
    return 0
