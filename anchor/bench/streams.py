"""``anchor bench streams``: viewers per session, WebRTC added latency, MQTT command round trip.

- ``viewers``: 1, 2, 4, ... (then one by one past the last count that
  held) aiortc receivers on one session (each with its
  own encoder, as real viewers have), for ``duration_s`` each while the
  anchor speaks without pause; a count holds when every viewer decodes
  >= 24 fps and sees fewer than one audio gap a minute (a gap: a jump of
  more than one 20 ms packet in the received audio, or 100 ms without audio).
  Reports the largest count that held and every step.
- ``webrtc_latency_ms``: per video frame, wall time from the moment the
  sender hands the frame to aiortc to the moment a loopback receiver has
  decoded it (encode + packetise + transport + jitter buffer + decode),
  matched by RTP timestamp.
- ``mqtt_round_trip_ms``: command published -> its ``accepted`` event
  received, through a real Mosquitto on loopback (started by the bench).
- ``admission``: the same fake anchor served over HTTP in its own process
  (``served_fake``), with the server's admission on: viewers offer one by
  one (6 s apart, as its load signals average over 5 s) until one is
  refused; reports how many it admitted, the refusal (503 and
  ``Retry-After``), every admitted viewer's fps and audio gaps then, and the
  first viewer's before the others came and once the server is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, MediaStreamTrack

from anchor.app.mqtt_control import SessionControl
from anchor.bench.processes import free_port, served_fake
from anchor.core.aio import cancel_and_wait
from anchor.core.config import AnchorSettings
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.core.stats import summarize
from anchor.face.face_stage import AnimatorDriver, FaceStage
from anchor.face.look import PortraitLook
from anchor.face.portrait import default_image, fit, make_portrait
from anchor.face.rig import MouthRig
from anchor.testing.fakes import FakeResponder, FakeTTS
from streams.aiortc_compat import allow_loopback_candidates, video_counted_not_decoded
from streams.mqtt import NO_DELAY, MqttControl
from streams.server import close_pc
from streams.settings import MqttSettings
from streams.tracks import ProgramAudioTrack, ProgramVideoTrack

SCRIPT = " ".join(f"word{i}" for i in range(40))


class TimedVideoTrack(ProgramVideoTrack):
    """Remembers when each frame (by its 90 kHz timestamp) was handed to aiortc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handed: dict[int, float] = {}

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()
        assert frame.pts is not None and frame.time_base is not None
        self.handed[int(frame.pts * frame.time_base / VIDEO_TIME_BASE)] = time.perf_counter()
        return frame


class Receiver:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video: list[tuple[int, float]] = []  # (RTP timestamp, decoded at)
        self.audio_pts: list[tuple[int, float]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.note(track.kind, frame, time.perf_counter())

    def note(self, kind: str, frame: Any, at: float) -> None:
        """A frame of ``kind`` came out of the receiver at ``at``."""
        (self.video if kind == "video" else self.audio_pts).append((int(frame.pts or 0), at))


async def _connect(
    session: Session, receiver: Receiver, *, timed: bool = False
) -> tuple[RTCPeerConnection, Any]:
    feed = session.subscribe(audio_ms=500, video_frames=8)
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = (TimedVideoTrack if timed else ProgramVideoTrack)(feed)
    sender.addTrack(ProgramAudioTrack(feed))
    sender.addTrack(video)
    loop = asyncio.get_running_loop()

    @receiver.pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        receiver.tasks.append(loop.create_task(receiver._read(track)))

    await sender.setLocalDescription(await sender.createOffer())
    assert sender.localDescription is not None
    await receiver.pc.setRemoteDescription(sender.localDescription)
    await receiver.pc.setLocalDescription(await receiver.pc.createAnswer())
    assert receiver.pc.localDescription is not None
    await sender.setRemoteDescription(
        RTCSessionDescription(sdp=receiver.pc.localDescription.sdp, type="answer")
    )
    return sender, (feed, video)


@contextlib.asynccontextmanager
async def fake_anchor(size: int) -> AsyncIterator[Session]:
    settings = AnchorSettings(media={"width": size, "height": size})
    portrait = make_portrait(fit(default_image(), (size, size)))
    tts = FakeTTS("tts", ms_per_word=250)
    face = FaceStage(AnimatorDriver(MouthRig(portrait)))
    graph = Graph().chain(FakeResponder("responder"), tts).link(tts, AUDIO_OUT)
    graph.add(face).link(tts, face).link(face, VIDEO_OUT)
    async with Runtime(settings) as rt:
        yield await rt.open_session(graph, session_id="bench", look=PortraitLook(portrait))


async def keep_talking(session: Session) -> None:
    events = session.events()
    try:
        while True:
            uid = await session.say(SCRIPT)
            while (event := await events.next()) is not None:
                if event.kind == "utterance_finished" and event.utterance_id == uid:
                    break
    finally:
        events.close()


async def _viewers_step(session: Session, count: int, duration_s: float) -> dict[str, Any]:
    receivers = [Receiver() for _ in range(count)]
    senders = []
    try:
        for receiver in receivers:
            senders.append(await _connect(session, receiver))
        await asyncio.sleep(2.0)  # connect and warm up
        start = [(len(r.video), len(r.audio_pts)) for r in receivers]
        began = time.perf_counter()
        await asyncio.sleep(duration_s)
        elapsed = time.perf_counter() - began
        fps = [(len(r.video) - v0) / elapsed for r, (v0, _) in zip(receivers, start, strict=True)]
        gaps = [audio_gaps(r.audio_pts[a0:]) for r, (_, a0) in zip(receivers, start, strict=True)]
    finally:
        for receiver in receivers:
            await cancel_and_wait(receiver.tasks, 5.0)
            await close_pc(receiver.pc)
        for sender, (feed, _) in senders:
            await close_pc(sender)
            session.unsubscribe(feed)
    gaps_per_min = max(gaps) * 60 / elapsed
    return {
        "viewers": count,
        "min_fps": round(min(fps), 2),
        "max_audio_gaps_per_min": round(gaps_per_min, 2),
        "held": min(fps) >= 24.0 and gaps_per_min < 1.0,
    }


def audio_gaps(arrivals: list[tuple[int, float]]) -> int:
    """Received audio frames ``(pts, arrived at)``: jumps over a lost 20 ms packet, or 100 ms of nothing."""
    return sum(1 for (a, ta), (b, tb) in itertools.pairwise(arrivals) if b - a > 2 * 960 or tb - ta > 0.1)


async def _latency(session: Session, seconds: float) -> dict[str, Any]:
    receiver = Receiver()
    sender, (feed, video) = await _connect(session, receiver, timed=True)
    try:
        await asyncio.sleep(seconds)
    finally:
        await cancel_and_wait(receiver.tasks, 5.0)
        await close_pc(receiver.pc)
        await close_pc(sender)
        session.unsubscribe(feed)
    handed = sorted(video.handed.items())
    if not receiver.video or not handed:
        return {"n": 0}
    origin = (receiver.video[0][0] - handed[0][0]) % 2**32  # aiortc's random RTP timestamp origin
    sent = dict(handed)
    latencies = [
        (at - sent[(ts - origin) % 2**32]) * 1000
        for ts, at in receiver.video
        if (ts - origin) % 2**32 in sent
    ]
    return summarize(latencies[25:])  # the first second: connection warm-up


def _mosquitto() -> str | None:
    """Debian installs the broker in /usr/sbin, which is not on every PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def _broker_config(directory: str, port: int) -> Path:
    conf = Path(directory) / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"set_tcp_nodelay true\nuser {getpass.getuser()}\n"
    )
    return conf


async def _round_trips(port: int, rounds: int) -> list[float]:
    times = []
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NO_DELAY) as client:
        await client.subscribe("anchor/main/events", qos=1)
        for i in range(rounds):
            cid = f"rt{i}"
            payload = json.dumps({"id": cid, "sent_at": time.time(), "ttl_s": 30, "muted": i % 2 == 0})
            began = time.perf_counter()
            await client.publish("anchor/main/cmd/mute", payload.encode(), qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    data = json.loads(bytes(message.payload))
                    if data.get("kind") == "accepted" and data.get("command") == cid:
                        break
            times.append((time.perf_counter() - began) * 1000)
    return times


async def _mqtt_round_trip(session: Session, rounds: int) -> dict[str, Any]:
    mosquitto = _mosquitto()
    if mosquitto is None:
        return {"skipped": "mosquitto is not installed"}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = _broker_config(tmp, port)
        broker = await asyncio.create_subprocess_exec(
            mosquitto, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        control = MqttControl(MqttSettings(url=f"mqtt://127.0.0.1:{port}"), SessionControl(session))
        try:
            await asyncio.sleep(0.3)
            control.start()
            async with asyncio.timeout(10):
                await control.connected.wait()
            times = await _round_trips(port, rounds)
            session.mute(False)
            return summarize(times[5:])
        finally:
            await control.stop()
            broker.terminate()
            await broker.wait()


async def bench_streams(
    settings: AnchorSettings,
    *,
    duration_s: float = 120.0,
    max_viewers: int = 16,
    latency_s: float = 20.0,
    mqtt_rounds: int = 200,
    admission: bool = True,
    admission_s: float = 30.0,
    max_admitted: int = 64,
) -> dict[str, Any]:
    size = settings.media.width
    allow_loopback_candidates()
    result: dict[str, Any] = {"bench": "streams", "size": size, "fps": 25, "step_seconds": duration_s}
    async with fake_anchor(size) as session:
        talker = asyncio.get_running_loop().create_task(keep_talking(session), name="bench:talk")
        try:
            result["webrtc_latency_ms"] = await _latency(session, latency_s)
            steps = []
            count, held_at, failed_at = 1, 0, max_viewers + 1
            while count <= max_viewers:  # double until a count fails...
                step = await _viewers_step(session, count, duration_s)
                steps.append(step)
                if not step["held"]:
                    failed_at = count
                    break
                held_at, count = count, count * 2
            for count in range(held_at + 1, min(failed_at, max_viewers + 1)):  # ...then walk up to it
                step = await _viewers_step(session, count, duration_s)
                steps.append(step)
                if not step["held"]:
                    break
            held = [s["viewers"] for s in steps if s["held"]]
            result["viewers_per_session"] = max(held) if held else 0
            result["viewer_steps"] = steps
            result["mqtt_round_trip_ms"] = await _mqtt_round_trip(session, mqtt_rounds)
        finally:
            talker.cancel()
            await asyncio.gather(talker, return_exceptions=True)
    if admission:
        result["admission"] = await _admission(size, admission_s, max_admitted)
    return result


async def _offer(http: aiohttp.ClientSession, url: str, receiver: Receiver) -> tuple[int, dict[str, Any]]:
    """Offer ``receiver`` to the served anchor; the HTTP status and, if refused, the refusal."""
    pc, loop = receiver.pc, asyncio.get_running_loop()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    pc.on("track", lambda track: receiver.tasks.append(loop.create_task(receiver._read(track))))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with http.post(f"{url}/offer", json=body) as response:
        reply = await response.json()
        if response.status != 200:
            return response.status, {**reply, "retry_after": response.headers.get("Retry-After")}
    await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
    return 200, {}


async def _watch(receivers: list[Receiver], seconds: float) -> list[dict[str, float]]:
    """Each receiver's decoded fps and audio gaps a minute over the next ``seconds``."""
    start = [(len(r.video), len(r.audio_pts)) for r in receivers]
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - began
    return [
        {
            "fps": round((len(r.video) - v0) / elapsed, 2),
            "audio_gaps_per_min": round(audio_gaps(r.audio_pts[a0:]) * 60 / elapsed, 2),
        }
        for r, (v0, a0) in zip(receivers, start, strict=True)
    ]


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """The admission signals the server saw: its CPU load and its viewers' dropped frames."""
    async with http.get(f"{url}/healthz") as response:
        health = await response.json()
    return {"cpu_load": health["cpu_load"], "viewer_drops_per_s": health["viewer_drops_per_s"]}


async def _admission(size: int, window_s: float, max_viewers: int) -> dict[str, Any]:
    receivers: list[Receiver] = []
    refusal: dict[str, Any] | None = None
    alone: dict[str, float] = {}
    steps: list[dict[str, Any]] = []
    # Receivers that count video without decoding it: their cost must not crowd out the anchor.
    with video_counted_not_decoded():
        async with served_fake(size) as (url, _), aiohttp.ClientSession() as http:
            try:
                while len(receivers) < max_viewers:
                    receiver = Receiver()
                    status, refused = await _offer(http, url, receiver)
                    if status != 200:
                        await close_pc(receiver.pc)
                        refusal = {"status": status, **refused, "server": await _health(http, url)}
                        break
                    receivers.append(receiver)
                    await asyncio.sleep(1.0)  # connect
                    if len(receivers) == 1:
                        alone = (await _watch(receivers, window_s))[0]
                    # 6 s: the server's load signals average over 5 s
                    seen = await _watch(receivers, max(6.0, window_s) if len(receivers) == 1 else 6.0)
                    steps.append(
                        {
                            "viewers": len(receivers),
                            "min_fps": min(v["fps"] for v in seen),
                            "max_audio_gaps_per_min": max(v["audio_gaps_per_min"] for v in seen),
                            "server": await _health(http, url),
                        }
                    )
                full = await _watch(receivers, window_s)
            finally:
                for receiver in receivers:
                    await cancel_and_wait(receiver.tasks, 5.0)
                    await close_pc(receiver.pc)
    return {
        "admitted": len(receivers),
        "refusal": refusal,
        "first_viewer_alone": alone,
        "first_viewer_when_full": full[0],
        "admitted_min_fps": min(v["fps"] for v in full),
        "admitted_max_audio_gaps_per_min": max(v["audio_gaps_per_min"] for v in full),
        "held": all(v["fps"] >= 24.0 and v["audio_gaps_per_min"] < 1.0 for v in full),
        "steps": steps,
    }
