"""``anchor worker``: runs sessions up to its capacity, taken from the cluster's MQTT broker.

A worker with room subscribes to the shared start topic (the broker gives
each request to one worker); it claims the session in the registry (a new
epoch, a lease), opens it, serves its viewers' signalling (relayed by the
gateways) and reads its news from the shared database. It renews its leases
every ``renew_s``; a session whose lease it cannot renew in time (the
database out of reach) or that moved to another worker is stopped here at
once, and its news writes are fenced by the epoch in any case.

Every worker watches the others' retained status: a worker's last will
(``offline``) ends its leases at once, and every ``sweep_s`` a worker with
room asks the broker to restart the sessions whose lease ran out (one start
request per lost epoch: only one worker can win it). The news goes on at the
sentence it stopped at.

SIGTERM drains: no new sessions; each line being spoken finishes (at most
``webrtc.drain_grace_s``), then the session is released so another worker
takes it over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt
from prometheus_client import Gauge

from anchor.app.live import anchor_graph, default_portrait, drain, live_responder
from anchor.app.settings import AppSettings
from anchor.core.aio import TaskOwner
from anchor.core.config import ConfigError
from anchor.core.graph import Graph
from anchor.core.pacer import VideoLook
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.face.look import PortraitLook
from anchor.news.database import Database, DatabaseError, DatabaseUnavailable, open_database
from anchor.news.desk import DeskTiming, NewsDesk
from anchor.news.registry import SessionRegistry
from anchor.news.store import Fenced, NewsQueue
from anchor.responders.answer import Responder
from anchor.speech.voices import resolve_voice
from streams.cluster_bus import (
    Bus,
    StartReply,
    StartRequest,
    Topics,
    WorkerStatus,
    decode,
    encode,
    reply_route,
)
from streams.server import WebRtcServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Programme:
    """What one session runs: its graph, its idle look, its question responder."""

    graph: Graph
    look: VideoLook | None = None
    responder: Responder | None = None


ProgrammeMaker = Callable[[], Programme]


def live_programme(settings: AppSettings) -> ProgrammeMaker:
    """The anchor of ``anchor run`` (default voice and face), one per session; models are loaded once."""
    portrait = default_portrait(settings)
    voice = resolve_voice(settings)

    def make() -> Programme:
        responder = live_responder(settings.responder)
        graph = anchor_graph(portrait, settings.media.fps, responder, voice, settings.face.driver)
        return Programme(graph, PortraitLook(portrait), responder)

    return make


@dataclass
class Lease:
    """This worker's claim on a session, from the claim on (a real session takes seconds to open: its
    lease is renewed meanwhile)."""

    epoch: int
    renewed: float  # monotonic time just before the last successful renewal was sent
    lost: bool = False  # moved to another worker, or possibly ran out: the session must not run here


@dataclass
class Hosted:
    session: Session
    desk: NewsDesk
    lease: Lease
    owner: TaskOwner
    stopping: bool = False


@dataclass
class WorkerState:
    hosted: dict[str, Hosted] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    leases: dict[str, Lease] = field(default_factory=dict)
    draining: bool = False


class Worker:
    def __init__(self, settings: AppSettings, make: ProgrammeMaker) -> None:
        if settings.mqtt.url is None:
            raise ConfigError("anchor worker needs mqtt.url: the broker its sessions come from")
        self.settings = settings
        self.cluster = settings.cluster
        self.make = make
        self.id = self.cluster.worker_id or socket.gethostname().split(".")[0][:64]
        self.incarnation = secrets.token_hex(4)
        self.holder = f"{self.id}/{self.incarnation}"
        self.topics = Topics(self.cluster)
        self.state = WorkerState()
        self.url = ""
        self._subscribed = False
        self._tasks = TaskOwner(f"worker:{self.id}", settings.graph.cancel_timeout_s, self._failed)
        self.bus = Bus(
            settings.mqtt,
            client_id=f"worker-{self.id}-{self.incarnation}",
            keepalive_s=self.cluster.keepalive_s,
            subscriptions=self._subscriptions,
            on_message=self._message,
            will=(self.topics.status(self.id), encode(self._status("offline"))),
            on_connect=self._announce,
        )

    # -- the process -----------------------------------------------------------------
    async def run(
        self, ready: Callable[[Worker], None] | None = None, stop: asyncio.Event | None = None
    ) -> None:
        db = open_database(self.settings.news.database, timeout_s=self.cluster.database_timeout_s)
        try:
            await db.open()
        except DatabaseError as exc:
            raise ConfigError(str(exc)) from None
        self.registry = SessionRegistry(db)
        self.db: Database = db
        async with Runtime(self.settings) as runtime, contextlib.AsyncExitStack() as parts:
            parts.push_async_callback(db.aclose)
            self.runtime = runtime
            self.server = WebRtcServer(
                self.settings.webrtc, {}, default_session="", registry=runtime.metrics.registry
            )
            capacity = Gauge(
                "anchor_session_capacity",
                "Sessions this worker runs at most.",
                registry=runtime.metrics.registry,
            )
            capacity.set(self.cluster.capacity)
            try:
                await self.server.start()
            except OSError as exc:
                where = f"{self.settings.webrtc.host}:{self.settings.webrtc.port}"
                raise ConfigError(f"cannot serve signalling on {where}: {exc.strerror}") from None
            parts.push_async_callback(self.server.close)
            self.url = self.cluster.advertise_url or self.server.url
            stop = stop or asyncio.Event()
            self.server.on_drain = stop.set  # POST /drain (a preStop hook) hands the sessions over too
            parts.push_async_callback(self._tasks.aclose)
            self.bus.start()
            parts.push_async_callback(self._goodbye)
            self._tasks.spawn(self._keep_leases(), "leases")
            self._tasks.spawn(self._watchdog(), "watchdog")
            self._tasks.spawn(self._sweep(), "sweep")
            if ready is not None:
                ready(self)
            await stop.wait()
            await self._drain()

    async def _goodbye(self) -> None:
        await self.bus.stop(farewell=(self.topics.status(self.id), encode(self._status("offline"))))

    async def _drain(self) -> None:
        """No new sessions; every session finishes its line, then is released for another worker."""
        self.state.draining = True
        self.server.drain()
        await self._update_subscription()
        await asyncio.gather(*(self._hand_over(sid) for sid in list(self.state.hosted)))

    async def _hand_over(self, session_id: str) -> None:
        hosted = self.state.hosted.get(session_id)
        if hosted is None:
            return
        hosted.desk.set_on_air(False)
        await drain(self.server, hosted.session, self.settings.webrtc.drain_grace_s)
        try:
            async with asyncio.timeout(2 * self.cluster.database_timeout_s):
                await hosted.desk.parked()
        except TimeoutError:
            log.warning("worker %s: %s's last place was not recorded in time", self.id, session_id)
        await self._stop(session_id, "drained", release=True)

    def _failed(self, name: str, exc: BaseException) -> None:
        log.error("worker %s: %s failed: %s", self.id, name, exc)

    # -- status ----------------------------------------------------------------------
    def _status(self, state: str) -> WorkerStatus:
        return WorkerStatus.model_validate(
            {
                "worker": self.id,
                "incarnation": self.incarnation,
                "state": state,
                "url": self.url,
                "capacity": self.cluster.capacity if not self.state.draining else 0,
                "sessions": sorted(self.state.hosted) + sorted(self.state.starting),
                "load": round(self.server.load(), 3) if state == "online" else 0.0,
                "at": time.time(),
            }
        )

    def room(self) -> int:
        if self.state.draining:
            return 0
        return self.cluster.capacity - len(self.state.hosted) - len(self.state.starting)

    def _subscriptions(self) -> list[str]:
        self._subscribed = self.room() > 0
        return [self.topics.statuses, *([self.topics.shared_start] if self._subscribed else [])]

    async def _announce(self) -> None:
        await self.bus.publish(self.topics.status(self.id), encode(self._status("online")), retain=True)

    async def _changed(self) -> None:
        await self._update_subscription()
        await self._announce()

    async def _update_subscription(self) -> None:
        """Only a worker with room is in the shared group: the broker gives requests to those."""
        want = self.room() > 0
        if want == self._subscribed:
            return
        self._subscribed = want
        try:
            if want:
                await self.bus.subscribe(self.topics.shared_start)
            else:
                await self.bus.unsubscribe(self.topics.shared_start)
        except aiomqtt.MqttError as exc:  # the connection is lost: the next connect subscribes afresh
            log.warning("worker %s: (un)subscribe failed: %s", self.id, exc)

    # -- requests ----------------------------------------------------------------------
    async def _message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        if topic == self.topics.start:
            request = decode(StartRequest, payload)
            if request is not None:
                self._tasks.spawn(self._start(request, reply_route(message)), f"start:{request.session}")
        elif topic.endswith("/status"):
            status = decode(WorkerStatus, payload)
            if status is not None and status.state == "offline" and status.worker != self.id:
                self._tasks.spawn(self._bury(status.holder), f"bury:{status.holder}")

    async def _reply(self, route: tuple[str, bytes] | None, reply: StartReply) -> None:
        if route is not None:
            await self.bus.publish(route[0], encode(reply), correlation=route[1])

    async def _start(self, request: StartRequest, route: tuple[str, bytes] | None) -> None:
        sid = request.session
        if sid in self.state.hosted:
            await self._reply(route, StartReply(session=sid, ok=True, url=self.url, worker=self.id))
            return
        if sid in self.state.starting:
            return  # the same request twice (QoS 1, or sweeps of several workers): one start answers
        if self.room() <= 0:
            await self._refuse(request, route)
            return
        self.state.starting.add(sid)
        try:
            reply = await self._open(request)
        finally:
            self.state.starting.discard(sid)
            await self._changed()
        await self._reply(route, reply)

    async def _refuse(self, request: StartRequest, route: tuple[str, bytes] | None) -> None:
        refused = [*request.refused, self.id]
        if len(refused) >= self.cluster.max_hops:
            error = f"no worker has room for session {request.session!r} (refused by {len(refused)})"
            await self._reply(route, StartReply(session=request.session, ok=False, error=error))
            return
        again = StartRequest(session=request.session, epoch=request.epoch, refused=refused)
        await self.bus.publish(
            self.topics.start,
            encode(again),
            response_topic=route[0] if route else None,
            correlation=route[1] if route else None,
        )

    async def _open(self, request: StartRequest) -> StartReply:
        sid = request.session
        try:
            holding = await self.registry.claim(
                sid, self.holder, self.url, self.cluster.lease_s, epoch=request.epoch
            )
        except DatabaseError as exc:
            return StartReply(session=sid, ok=False, error=f"worker {self.id}: {exc}")
        if holding.holder != self.holder:
            if holding.live:
                return StartReply(session=sid, ok=True, url=holding.url, worker=holding.holder.split("/")[0])
            return StartReply(session=sid, ok=False, error=f"session {sid!r} is being restarted; try again")
        lease = Lease(holding.epoch, time.monotonic())
        self.state.leases[sid] = lease
        try:
            hosted = await self._host(sid, lease)
        except Exception as exc:
            log.exception("worker %s: session %s did not start", self.id, sid)
            self._forget(sid, lease)
            with contextlib.suppress(DatabaseError):
                await self.registry.release(sid, holding.epoch, wanted=True)
            return StartReply(
                session=sid, ok=False, error=f"session {sid!r} did not start: {type(exc).__name__}"
            )
        self.state.hosted[sid] = hosted
        if lease.lost:
            await self._stop(sid, "its lease was lost while it started")
            return StartReply(session=sid, ok=False, error=f"session {sid!r} is being restarted; try again")
        log.info("worker %s: session %s started (epoch %d)", self.id, sid, holding.epoch)
        return StartReply(session=sid, ok=True, url=self.url, worker=self.id)

    def _forget(self, sid: str, lease: Lease) -> None:
        if self.state.leases.get(sid) is lease:  # not a newer claim of the same session
            del self.state.leases[sid]

    async def _host(self, sid: str, lease: Lease) -> Hosted:
        epoch = lease.epoch
        programme = await asyncio.to_thread(self.make)
        session = await self.runtime.open_session(
            programme.graph,
            session_id=sid,
            look=programme.look,
            answer_transcripts=programme.responder is not None,
        )
        queue = NewsQueue(self.db, sid, epoch=epoch)
        desk = NewsDesk(session, queue, DeskTiming(resume_after_s=self.settings.news.resume_after_s))
        desk.on_air = self.settings.news.on_air

        def failed(name: str, exc: BaseException) -> None:
            session.announce("error", f"{name} failed: {type(exc).__name__}: {exc}")
            if isinstance(exc, Fenced):
                lease.lost = True
                self._stop_soon(sid, str(exc))

        owner = TaskOwner(f"session:{sid}", self.settings.graph.cancel_timeout_s, failed)
        owner.spawn(desk.run(), "news-desk")
        owner.spawn(self._forward_events(sid, session, epoch), "events")
        self.server.add_session(sid, session, desk)
        return Hosted(session, desk, lease, owner)

    async def _forward_events(self, sid: str, session: Session, epoch: int) -> None:
        """The session's public events to ``{topic}/sessions/{sid}/events``, wherever it runs."""
        events = session.events()
        topic = self.topics.session_events(sid)
        try:
            while (event := await events.next()) is not None:
                if event.private:
                    continue
                data = {
                    "kind": event.kind,
                    "utterance": event.utterance_id,
                    "detail": event.detail,
                    "origin": event.origin,
                    "worker": self.id,
                    "epoch": epoch,
                    "at": time.time(),
                }
                await self.bus.publish(topic, json.dumps(data).encode())
        finally:
            events.close()

    async def _stop(self, sid: str, why: str, *, release: bool = False) -> None:
        hosted = self.state.hosted.get(sid)
        if hosted is None or hosted.stopping:
            return
        hosted.stopping = True
        log.warning("worker %s: stopping session %s: %s", self.id, sid, why)
        await self.server.remove_session(sid)
        await hosted.owner.aclose()
        await self.runtime.close_session(sid)
        self.state.hosted.pop(sid, None)
        self._forget(sid, hosted.lease)
        if release:
            with contextlib.suppress(DatabaseError):
                await self.registry.release(sid, hosted.lease.epoch, wanted=True)
        await self._changed()

    def _stop_soon(self, sid: str, why: str) -> None:
        """Stop ``sid`` in a task of its own: closing a session takes a while, and the leases of the
        others must go on being renewed meanwhile."""
        self._tasks.spawn(self._stop(sid, why), f"stop:{sid}")

    # -- leases ------------------------------------------------------------------------
    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.renew_s)
            for sid, lease in list(self.state.leases.items()):
                if lease.lost:
                    continue
                sent = time.monotonic()
                try:
                    held = await self.registry.renew(sid, lease.epoch, self.cluster.lease_s)
                except DatabaseUnavailable as exc:
                    log.warning("worker %s: lease of %s not renewed: %s", self.id, sid, exc)
                    continue
                if held:
                    lease.renewed = sent
                else:
                    lease.lost = True
                    self._stop_soon(sid, "it moved to another worker")

    async def _watchdog(self) -> None:
        """A session whose lease may have run out in the database stops here before another worker can
        take it (the renewal is counted from before it was sent)."""
        margin = min(self.cluster.renew_s, self.cluster.lease_s * 0.1)
        while True:
            await asyncio.sleep(min(0.25, self.cluster.renew_s / 2))
            now = time.monotonic()
            for sid, lease in list(self.state.leases.items()):
                if not lease.lost and now >= lease.renewed + self.cluster.lease_s - margin:
                    lease.lost = True
                    self._stop_soon(sid, "its lease ran out (the database is out of reach)")

    async def _bury(self, holder: str) -> None:
        """A worker's last will: its leases end now, and its sessions are restarted."""
        try:
            ended = await self.registry.expire(holder)
        except DatabaseError as exc:
            log.warning("worker %s: could not end %s's leases: %s", self.id, holder, exc)
            return
        if ended:
            log.warning("worker %s: %s is gone; %d session(s) to restart", self.id, holder, ended)
            await self._restart_orphans()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.cluster.sweep_s)
            await self._restart_orphans()

    async def _restart_orphans(self) -> None:
        if self.room() <= 0 or not self.bus.connected.is_set():
            return
        try:
            orphans = await self.registry.orphans()
        except DatabaseError as exc:
            log.warning("worker %s: no sweep: %s", self.id, exc)
            return
        for orphan in orphans:
            request = StartRequest(session=orphan.session, epoch=orphan.epoch)
            await self.bus.publish(self.topics.start, encode(request))


def run_worker(settings: AppSettings, make: ProgrammeMaker | None = None) -> int:
    """``anchor worker``: serve until SIGTERM (drain, hand the sessions over) or Ctrl-C."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stop = asyncio.Event()

        def terminate() -> None:
            if stop.is_set():
                task.cancel()
            stop.set()

        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, terminate)
        maker = make if make is not None else await asyncio.to_thread(live_programme, settings)
        worker = Worker(settings, maker)

        def ready(w: Worker) -> None:
            print(f"worker {w.id} serving {w.url}, up to {settings.cluster.capacity} session(s)", flush=True)

        await worker.run(ready, stop)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())
    print("worker stopped", flush=True)
    return 0
