"""``anchor bench cluster``: sessions over three workers, each its own host; a worker killed, a link cut.

The bench makes test hosts with network namespaces (``anchor.bench.netns``,
root needed): ``hub`` runs Mosquitto, PostgreSQL and ``anchor gateway``;
``w0``..``w2`` each run a worker on fake models (``anchor.bench.cluster_worker``:
three real anchors would not keep real time on two cores). This process is
the audience: one viewer per session watches through the gateway and joins
again by itself when the program stops coming (as the page does), and an
MQTT client records what every session says (``{topic}/sessions/+/events``).

Reports:

- ``session_start_s``: a news item for a session no one runs, posted to the
  gateway, until it is queued on a worker that started the session (p50/p95);
- ``failover_sigkill_s``: the worker holding a session killed with SIGKILL,
  until its viewer hears speech again (target <= 5 s; the viewer takes 1 s
  of no program to notice); the killed worker is started again afterwards,
  as Kubernetes would; ``restarted_sigkill_s``: until the session started
  a line on another worker (from its events), whatever the viewer took;
- ``failover_cut_link_s`` and ``restarted_cut_link_s``: the same for a
  worker whose link was cut (nothing in or out; target <= 10 s); after the
  link is back, the worker must not run the session any more;
- ``news``: every sentence of every item, spoken to its end as the audience
  saw it: ``lost`` (never) and ``repeated`` (more than once), target 0.
  ``late_events``: events that arrived over 1 s after they happened (a
  cut-off worker's, once its link was back; not counted as readings);
- ``offer_ms``: ``POST /offer`` through the gateway and straight to the
  worker, in turns, and the relay's overhead (difference of the percentiles).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription

from anchor.app.settings import AppSettings
from anchor.bench.netns import Host, TestNetwork
from anchor.core.aio import cancel_and_wait
from anchor.core.stats import summarize
from anchor.news.database import open_database
from anchor.news.registry import SessionRegistry
from anchor.speech.phrases import sentences as split_sentences
from anchor.testing.postgres import running_postgres
from streams.auth import TokenAuthority
from streams.server import close_pc

log = logging.getLogger(__name__)

PORT = 8080
LATE_EVENT_S = 1.0  # an event this much older than its arrival was sent from behind a cut link
SPEECH_RMS = 0.01  # FakeTTS's tones are ~0.2 RMS; the idle program is silence
TOPIC = "anchor/cluster"


@dataclass
class Rig:
    network: TestNetwork
    hub: Host
    workers: dict[str, Host]
    gateway_url: str
    broker: str
    database: str
    secret: bytes
    logs: Path
    worker_processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def token(self, session: str) -> str:
        return TokenAuthority(self.secret).issue("bench", session, {"watch", "talk", "control"})

    def start_worker(self, name: str) -> None:
        host = self.workers[name]
        env = {
            **self.env,
            "ANCHOR_WEBRTC__HOST": host.address,
            "ANCHOR_CLUSTER__WORKER_ID": name,
        }
        log_file = self.logs / f"{name}-{len(host.processes)}.log"
        argv = [sys.executable, "-m", "anchor.bench.cluster_worker"]
        self.worker_processes[name] = host.start(argv, env=env, log=log_file)


def _wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout_s:g} s")


@contextlib.contextmanager
def cluster_rig(workers: int = 3, capacity: int = 3, logs: Path | None = None) -> Iterator[Rig]:
    """Hub (broker, PostgreSQL, gateway) and ``workers`` worker hosts, all torn down on exit."""
    folder = logs or Path(tempfile.mkdtemp(prefix="anchor-cluster-"))
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(TestNetwork())
        hub = network.add("hub")
        hosts = {f"w{i}": network.add(f"w{i}") for i in range(workers)}
        database = stack.enter_context(running_postgres(hub.address, 5432, prefix=hub.prefix))
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener 1883 {hub.address}\nallow_anonymous true\n")
        mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin") or "mosquitto"
        hub.start([mosquitto, "-c", str(conf)], log=folder / "mosquitto.log")
        _wait_for_port(hub.address, 1883, 10)
        secret = secrets.token_hex(32)
        env = {
            "ANCHOR_MQTT__URL": f"mqtt://{hub.address}:1883",
            "ANCHOR_NEWS__DATABASE": database,
            "ANCHOR_WEBRTC__JWT_SECRET": secret,
            "ANCHOR_WEBRTC__PORT": str(PORT),
            "ANCHOR_WEBRTC__TRUSTED_PROXIES": json.dumps([hub.address]),
            # One audience process from one address opens many viewers: the per-client limit is lifted.
            "ANCHOR_WEBRTC__OFFERS_PER_MINUTE": "100000",
            "ANCHOR_CLUSTER__CAPACITY": str(capacity),
            "ANCHOR_NEWS__RESUME_AFTER_S": "0.5",
            "ANCHOR_MQTT__RECONNECT_MAX_S": "2",  # a worker whose link comes back rejoins within 2 s
        }
        rig = Rig(
            network,
            hub,
            hosts,
            f"http://{hub.address}:{PORT}",
            env["ANCHOR_MQTT__URL"],
            database,
            secret.encode(),
            folder,
        )
        rig.env = env
        gateway_env = {**env, "ANCHOR_WEBRTC__HOST": hub.address}
        hub.start([sys.executable, "-m", "anchor", "gateway"], env=gateway_env, log=folder / "gateway.log")
        for name in hosts:
            rig.start_worker(name)
        yield rig


async def until_workers(http: aiohttp.ClientSession, rig: Rig, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{rig.gateway_url}/healthz") as response:
                if response.status == 200 and (await response.json())["workers"] >= count:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the gateway did not see {count} workers online within {timeout_s:g} s")


def script(session: str, items: int, sentences: int) -> list[tuple[str, str]]:
    """News items whose every sentence is unique across the run (so each can be counted)."""
    return [
        (
            f"{session} item {k}",
            " ".join(f"{session} item {k} sentence {n} is read." for n in range(sentences)),
        )
        for k in range(items)
    ]


def spoken_sentences(session: str, items: int, sentences: int) -> list[str]:
    """What the desk reads of ``script``: each title as a sentence, then the body's sentences."""
    out = []
    for title, body in script(session, items, sentences):
        out += [title + ".", *split_sentences(body)]
    return out


@dataclass
class Viewer:
    """One audio-only viewer of a session through the gateway, joining again when the program stops."""

    http: aiohttp.ClientSession
    rig: Rig
    session: str
    speech: list[tuple[int, float]] = field(default_factory=list)  # (join, monotonic time) of speech frames
    joins: int = 0
    _task: asyncio.Task[None] | None = None
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"viewer:{self.session}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 5.0)
        await asyncio.gather(*self._closing)

    def speech_after(self, t: float, *, join_after: int) -> float | None:
        """The first speech heard after ``t`` on a connection made after the ``join_after``-th (frames of an
        older connection still come out of its jitter buffer for a moment after its sender died)."""
        later = [at for join, at in self.speech if at > t and join > join_after]
        return later[0] if later else None

    async def _run(self) -> None:
        while True:
            pc = RTCPeerConnection()
            try:
                track = await self._join(pc)
                while True:
                    async with asyncio.timeout(1.0):  # no program for 1 s: join again
                        frame = await track.recv()
                    samples = frame.to_ndarray().astype(np.float32) / 32768.0
                    if float(np.sqrt(np.mean(samples**2))) > SPEECH_RMS:
                        self.speech.append((self.joins, time.monotonic()))
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                log.info("viewer %s: program lost (%r); joining again", self.session, exc)
            except Exception as exc:  # noqa: BLE001 - aiortc's track ends with MediaStreamError and others
                log.info("viewer %s: %s; joining again", self.session, type(exc).__name__)
            finally:
                # Closed beside the next join, not before it: closing a peer whose other end is gone
                # must not delay the viewer's coming back (it is awaited when the viewer stops).
                closing = asyncio.get_running_loop().create_task(_close_within(pc, 3.0), name="viewer:close")
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            await asyncio.sleep(0.1)

    async def _join(self, pc: RTCPeerConnection) -> Any:
        pc.addTransceiver("audio", direction="recvonly")
        tracks: asyncio.Queue[Any] = asyncio.Queue()
        pc.on("track", tracks.put_nowait)
        await pc.setLocalDescription(await pc.createOffer())
        body = {"type": "offer", "sdp": pc.localDescription.sdp, "session": self.session}
        headers = {"Authorization": f"Bearer {self.rig.token(self.session)}"}
        refusals: set[int] = set()
        while True:
            async with self.http.post(
                f"{self.rig.gateway_url}/offer", json=body, headers=headers
            ) as response:
                answer = await response.json()
                if response.status == 200:
                    break
            if response.status not in refusals:  # each kind of refusal once in the log
                refusals.add(response.status)
                log.info("viewer %s: %d %s; asking again", self.session, response.status, answer.get("error"))
            await asyncio.sleep(0.25)  # 503 while the session moves: ask again
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self.joins += 1
        log.info("viewer %s: joined (%d)", self.session, self.joins)
        async with asyncio.timeout(10.0):
            return await tracks.get()


@dataclass
class Audience:
    """Every session's public events, as MQTT carries them from whichever worker holds it."""

    events: list[dict[str, Any]] = field(default_factory=list)

    async def listen(self, broker_host: str, connected: asyncio.Event, *, port: int = 1883) -> None:
        async with aiomqtt.Client(broker_host, port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(f"{TOPIC}/sessions/+/events", qos=1)
            connected.set()
            async for message in client.messages:
                data = json.loads(bytes(message.payload))
                data["session"] = str(message.topic).split("/")[-2]
                data["received"] = time.time()
                self.events.append(data)

    def finished(self, session: str) -> dict[str, list[tuple[str, int]]]:
        """Each news sentence of ``session`` spoken to its end, as a live audience could have heard it: by
        which worker and epoch, each time. An utterance is one worker's, in one epoch (ids restart with
        every session); an event delivered twice (MQTT's QoS 1 is at least once) is one reading; an event
        that arrives late is from a worker cut off when it happened (its TCP segments delivered once the
        link came back): no one heard that audio live, so it is no reading."""
        texts: dict[tuple[str, int, str], str] = {}
        done: dict[tuple[str, int, str], str] = {}
        for event in self.events:
            if event["session"] != session or event["received"] - event["at"] > LATE_EVENT_S:
                continue
            key = (event["worker"], event["epoch"], event["utterance"])
            if event["kind"] == "utterance_started" and event["origin"] == "news":
                texts[key] = event["detail"]
            elif event["kind"] == "utterance_finished" and event["detail"] == "done" and key in texts:
                done[key] = texts[key]
        readings: dict[str, list[tuple[str, int]]] = {}
        for (worker, epoch, _), text in done.items():
            readings.setdefault(text, []).append((worker, epoch))
        return readings

    def speaking_again(self, session: str, since: float, lost: str) -> float | None:
        """Wall time of the first line ``session`` started on a worker other than ``lost`` after
        ``since``: the restart as the workers saw it, whatever the viewer's own reconnection took."""
        starts = [
            e["at"]
            for e in self.events
            if e["session"] == session
            and e["kind"] == "utterance_started"
            and e["worker"] != lost
            and e["at"] > since
        ]
        return min(starts) if starts else None

    def holders(self, session: str, since: float) -> set[str]:
        return {e["worker"] for e in self.events if e["session"] == session and e["at"] > since}


async def holder_of(rig: Rig, session: str) -> str:
    db = open_database(rig.database)
    await db.open()
    try:
        holding = await SessionRegistry(db).lookup(session)
    finally:
        await db.aclose()
    if holding is None or not holding.live:
        raise RuntimeError(f"session {session} is held by no one")
    return holding.holder.split("/")[0]


async def post_news(http: aiohttp.ClientSession, rig: Rig, session: str, title: str, body: str) -> float:
    began = time.perf_counter()
    headers = {"Authorization": f"Bearer {rig.token(session)}"}
    payload = {"session": session, "title": title, "body": body, "priority": 0}
    async with http.post(f"{rig.gateway_url}/news", json=payload, headers=headers) as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"POST /news for {session}: {response.status} {await response.text()}")
    return time.perf_counter() - began


async def time_offers(
    http: aiohttp.ClientSession, rig: Rig, session: str, url: str, rounds: int
) -> list[float]:
    """``POST /offer`` round trips at ``url``; each viewer is closed (``DELETE``) before the next comes, so
    the worker's admission sees one viewer at a time."""
    times = []
    headers = {"Authorization": f"Bearer {rig.token(session)}"}
    for _ in range(rounds):
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("audio", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            body = {"type": "offer", "sdp": pc.localDescription.sdp, "session": session}
            began = time.perf_counter()
            async with http.post(f"{url}/offer", json=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"/offer at {url}: {response.status} {answer}")
            times.append(time.perf_counter() - began)
            async with http.delete(f"{url}/whep/{session}/{answer['peer']}", headers=headers) as response:
                await response.read()
        finally:
            await close_pc(pc)
    return times


async def until_all_read(rig: Rig, sessions: list[str], timeout_s: float) -> bool:
    db = open_database(rig.database)
    await db.open()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            open_items = await db.fetchone(
                "SELECT COUNT(*) FROM news_items WHERE state IN ('queued', 'reading')", ()
            )
            if open_items is not None and int(open_items[0]) == 0:
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await db.aclose()


@contextlib.asynccontextmanager
async def audience_of(rig: Rig) -> AsyncIterator[Audience]:
    audience = Audience()
    connected = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        audience.listen(rig.hub.address, connected), name="audience"
    )
    try:
        async with asyncio.timeout(10):
            await connected.wait()
        yield audience
    finally:
        await cancel_and_wait([task], 5.0)


async def measure_cluster(
    rig: Rig, *, sessions: int = 4, items: int = 3, sentences: int = 10
) -> dict[str, Any]:
    names = [f"s{i}" for i in range(sessions)]
    result: dict[str, Any] = {"workers": len(rig.workers), "sessions": sessions}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        audience_of(rig) as audience,
    ):
        await until_workers(http, rig, len(rig.workers))
        starts = []
        for name in names:
            (title, body), *rest = script(name, items, sentences)
            starts.append(await post_news(http, rig, name, title, body))
            for title, body in rest:
                await post_news(http, rig, name, title, body)
        viewers = {name: Viewer(http, rig, name) for name in names}
        for viewer in viewers.values():
            viewer.start()
        try:
            await asyncio.sleep(3.0)  # everyone watching and hearing
            # A worker killed.
            victim_session = names[0]
            victim = await holder_of(rig, victim_session)
            killed_at, killed_wall = time.monotonic(), time.time()
            rig.worker_processes[victim].kill()
            back = await _speech_again(viewers[victim_session], killed_at, 20.0)
            result["failover_sigkill_s"] = None if back is None else round(back - killed_at, 3)
            again = audience.speaking_again(victim_session, killed_wall, victim)
            result["restarted_sigkill_s"] = None if again is None else round(again - killed_wall, 3)
            await asyncio.to_thread(rig.worker_processes[victim].wait, 10)
            rig.start_worker(victim)  # as Kubernetes would
            await until_workers(http, rig, len(rig.workers))
            # A link cut.
            cut_session = next(n for n in names if n != victim_session)
            cut = await holder_of(rig, cut_session)
            cut_at, cut_wall = time.monotonic(), time.time()
            await asyncio.to_thread(rig.network.cut, cut)  # `ip` runs beside the viewers, not on their loop
            back = await _speech_again(viewers[cut_session], cut_at, 30.0)
            result["failover_cut_link_s"] = None if back is None else round(back - cut_at, 3)
            again = audience.speaking_again(cut_session, cut_wall, cut)
            result["restarted_cut_link_s"] = None if again is None else round(again - cut_wall, 3)
            await asyncio.sleep(
                max(0.0, 6.0 - (time.monotonic() - cut_at))
            )  # past its lease, whatever happened
            await asyncio.to_thread(rig.network.restore, cut)
            restored = time.time()
            await asyncio.sleep(4.0)
            result["cut_worker_after_restore"] = {
                "worker": cut,
                "still_speaking": sorted(n for n in names if cut in audience.holders(n, restored)),
            }
        finally:
            for viewer in viewers.values():
                await viewer.stop()
        # The relay's cost on /offer: through the gateway and straight to the worker, in turns.
        steady = names[-1]
        holding_url = f"http://{rig.workers[await holder_of(rig, steady)].address}:{PORT}"
        via, direct = [], []
        for _ in range(20):
            via += await time_offers(http, rig, steady, rig.gateway_url, 1)
            direct += await time_offers(http, rig, steady, holding_url, 1)
        finished = await until_all_read(rig, names, 180.0)
        await until_workers(http, rig, len(rig.workers))  # the cut-off worker is back
        starts += [
            await post_news(http, rig, f"t{i}", "Late item", "A late session starts.") for i in range(4)
        ]
    result["session_start_s"] = summarize(starts)
    gateway_ms, direct_ms = summarize([t * 1000 for t in via]), summarize([t * 1000 for t in direct])
    result["offer_ms"] = {
        "gateway": gateway_ms,
        "direct": direct_ms,
        "relay_overhead": {q: round(gateway_ms[q] - direct_ms[q], 2) for q in ("p50", "p95")},
    }
    lost: list[str] = []
    repeated: dict[str, list[tuple[str, int]]] = {}
    total = 0
    for name in names:
        readings = audience.finished(name)
        expected = spoken_sentences(name, items, sentences)
        total += len(expected)
        lost += [text for text in expected if text not in readings]
        repeated |= {text: readings[text] for text in expected if len(readings.get(text, [])) > 1}
    result["news"] = {"sentences": total, "lost": len(lost), "repeated": len(repeated), "all_read": finished}
    if lost or repeated:  # which, and by whom: (worker, epoch) of each reading
        result["news_detail"] = {"lost": lost, "repeated": repeated}
    result["late_events"] = sum(1 for e in audience.events if e["received"] - e["at"] > LATE_EVENT_S)
    result["viewer_joins"] = {name: v.joins for name, v in viewers.items()}
    return result


async def _close_within(pc: RTCPeerConnection, timeout_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await close_pc(pc)


async def _speech_again(viewer: Viewer, since: float, timeout_s: float) -> float | None:
    """When ``viewer`` hears speech on a connection it made after ``since`` (its join then lost)."""
    joined_before = viewer.joins
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        found = viewer.speech_after(since, join_after=joined_before)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    return None


async def bench_cluster(
    settings: AppSettings, *, sessions: int = 4, logs: Path | None = None
) -> dict[str, Any]:
    """``anchor bench cluster``: see the module's docstring."""
    del settings  # every process of the rig takes its settings from the environment the bench gives it
    with cluster_rig(logs=logs) as rig:
        return await measure_cluster(rig, sessions=sessions)
