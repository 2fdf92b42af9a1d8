"""``anchor bench fanout``: viewers through Janus, the anchor's CPU with 1 and with many, and a Janus restart.

The bench starts Janus (``deploy/janus``'s config on free loopback ports)
and a served fake anchor in its own process with ``fanout.mode = "janus"``,
so the anchor's CPU time is its own. Receivers subscribe through the
anchor's ``/fanout`` relay and count video frames without decoding them
(``video_counted_not_decoded``). Reports:

- ``viewers``: how many were subscribed and how many received the program;
- ``anchor_cpu``: the anchor process's CPU share (of one core) with one
  viewer and with all of them, and the change (target: within 10 %);
- ``sfu_added_latency_ms``: per video frame, arrival at a receiver through
  Janus minus arrival at a direct receiver of the same frame (each frame
  carries its number in its picture: ``anchor.bench.stamps``), p50/p95;
- ``republish_s``: Janus killed (SIGKILL) and started again: seconds until
  the anchor has published again, and until a viewer that subscribes again
  receives video.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCSessionDescription

from anchor.bench.processes import free_port, served_fake, until_http_ok
from anchor.bench.stamps import read_stamp
from anchor.bench.streams import Receiver
from anchor.core.aio import cancel_and_wait
from anchor.core.config import AnchorSettings
from anchor.core.stats import summarize
from streams.aiortc_compat import allow_loopback_candidates, video_counted_not_decoded
from streams.server import close_pc

JANUS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "janus"


def janus_binary() -> str | None:
    return shutil.which("janus")


@dataclass
class Janus:
    """Janus run from deploy/janus's files with its HTTP API on ``port`` (loopback)."""

    directory: Path
    port: int
    admin_key: str = "bench-admin-key"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    def start(self) -> None:
        config = self.directory / "config"
        if not config.exists():
            shutil.copytree(JANUS_CONFIG, config)
            http = config / "janus.transport.http.jcfg"
            text = http.read_text()
            assert "port = 8088" in text, "deploy/janus/janus.transport.http.jcfg moved its port"
            http.write_text(text.replace("port = 8088", f"port = {self.port}"))
        env = {**os.environ, "JANUS_ADMIN_KEY": self.admin_key, "JANUS_RUN_DIR": str(self.directory / "run")}
        self.process = subprocess.Popen(
            ["sh", str(config / "start.sh")],
            env=env,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_no_core_dumps,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@contextlib.contextmanager
def running_janus() -> Iterator[Janus]:
    with tempfile.TemporaryDirectory(prefix="anchor-janus-") as directory:
        janus = Janus(Path(directory), free_port())
        janus.start()
        try:
            yield janus
        finally:
            janus.stop()


async def until_janus_answers(http: aiohttp.ClientSession, janus: Janus, timeout_s: float = 15.0) -> None:
    await until_http_ok(http, f"{janus.url}/info", timeout_s, every_s=0.1)


async def watch_through_sfu(
    http: aiohttp.ClientSession,
    url: str,
    session: str,
    *,
    token: str | None = None,
    receiver: Receiver | None = None,
) -> tuple[Receiver, str]:
    """A receiver (``receiver``, or a new one) subscribed through the anchor's ``/fanout`` relay, and its
    viewer id."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{url}/fanout/{session}", headers=headers) as response:
        offer = await response.json()
        if response.status != 201:
            raise RuntimeError(f"/fanout answered {response.status}: {offer}")
    receiver = receiver or Receiver()
    loop = asyncio.get_running_loop()
    receiver.pc.on("track", lambda track: receiver.tasks.append(loop.create_task(receiver._read(track))))
    await receiver.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
    await receiver.pc.setLocalDescription(await receiver.pc.createAnswer())
    answer = {"type": "answer", "sdp": receiver.pc.localDescription.sdp}
    async with http.post(
        f"{url}/fanout/{session}/{offer['viewer']}", json=answer, headers=headers
    ) as response:
        if response.status != 200:
            await close_pc(receiver.pc)
            raise RuntimeError(f"the answer was refused: {response.status} {await response.text()}")
    return receiver, str(offer["viewer"])


async def close_receivers(receivers: list[Receiver]) -> None:
    for receiver in receivers:
        await cancel_and_wait(receiver.tasks, 5.0)
        await close_pc(receiver.pc)


async def frames_in(receivers: list[Receiver], seconds: float) -> list[int]:
    before = [len(r.video) for r in receivers]
    await asyncio.sleep(seconds)
    return [len(r.video) - b for r, b in zip(receivers, before, strict=True)]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU time per wall second over the next ``seconds`` (1.0: one core)."""
    began, cpu = time.monotonic(), _cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (_cpu_seconds(pid) - cpu) / (time.monotonic() - began)


async def bench_fanout(
    settings: AnchorSettings, *, viewers: int = 50, seconds: float = 20.0
) -> dict[str, Any]:
    if janus_binary() is None:
        return {"bench": "fanout", "skipped": "needs Debian's janus"}
    allow_loopback_candidates()
    size = settings.media.width
    result: dict[str, Any] = {"bench": "fanout", "size": size, "viewers_asked": viewers}
    with running_janus() as janus:
        fanout = {
            "ANCHOR_FANOUT__MODE": "janus",
            "ANCHOR_FANOUT__JANUS_URL": janus.url,
            "ANCHOR_FANOUT__JANUS_ADMIN_KEY": janus.admin_key,
        }
        async with aiohttp.ClientSession() as http:
            await until_janus_answers(http, janus)
        async with (
            served_fake(size, stamp=True, env=fanout) as (url, pid),
            aiohttp.ClientSession() as http,
        ):
            await _until_published(http, url)
            result["sfu_added_latency_ms"] = await _added_latency(http, url, seconds)
            with video_counted_not_decoded():  # many receivers in one process: count, do not decode
                result.update(await _many(http, url, pid, viewers, seconds))
                result["republish_s"] = await _restart(http, url, janus)
    return result


async def _many(
    http: aiohttp.ClientSession, url: str, pid: int, viewers: int, seconds: float
) -> dict[str, Any]:
    receivers: list[Receiver] = []
    try:
        receivers.append((await watch_through_sfu(http, url, "bench"))[0])
        await asyncio.sleep(3.0)
        one = await cpu_share(pid, seconds)
        for _ in range(viewers - 1):
            receivers.append((await watch_through_sfu(http, url, "bench"))[0])
        await asyncio.sleep(3.0)
        counted = asyncio.ensure_future(frames_in(receivers, seconds))
        many = await cpu_share(pid, seconds)
        frames = await counted
    finally:
        await close_receivers(receivers)
    return {
        "viewers": {
            "subscribed": len(receivers),
            "receiving": sum(1 for n in frames if n > 0),
            "min_fps": round(min(frames) / seconds, 2),
        },
        "anchor_cpu": {
            "one_viewer": round(one, 3),
            "all_viewers": round(many, 3),
            "change": round((many - one) / one, 3) if one > 0 else None,
        },
    }


async def _until_published(http: aiohttp.ClientSession, url: str, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            async with http.post(f"{url}/fanout/bench") as response:
                if response.status == 201:
                    viewer = (await response.json())["viewer"]
                    async with http.delete(f"{url}/fanout/bench/{viewer}"):
                        return
            await asyncio.sleep(0.2)


class StampReceiver(Receiver):
    """Decodes the video and notes when each stamped frame number (``anchor.bench.stamps``) arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, float] = {}

    def note(self, kind: str, frame: Any, at: float) -> None:
        if isinstance(frame, av.VideoFrame):
            self.arrived.setdefault(read_stamp(frame.to_ndarray(format="gray")), at)


async def _added_latency(http: aiohttp.ClientSession, url: str, seconds: float) -> dict[str, Any]:
    """The same frames through the SFU and directly: how much later each arrives through the SFU."""
    via_sfu = StampReceiver()
    await watch_through_sfu(http, url, "bench", receiver=via_sfu)
    direct = StampReceiver()
    loop = asyncio.get_running_loop()
    direct.pc.addTransceiver("video", direction="recvonly")
    direct.pc.on("track", lambda track: direct.tasks.append(loop.create_task(direct._read(track))))
    await direct.pc.setLocalDescription(await direct.pc.createOffer())
    body = {"sdp": direct.pc.localDescription.sdp, "type": "offer"}
    async with http.post(f"{url}/offer", json=body) as response:
        answer = await response.json()
    await direct.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        await asyncio.sleep(seconds)
    finally:
        await close_receivers([via_sfu, direct])
    both = sorted(set(via_sfu.arrived) & set(direct.arrived))[25:]  # past the first second of warm-up
    return summarize([(via_sfu.arrived[n] - direct.arrived[n]) * 1000 for n in both])


async def _restart(http: aiohttp.ClientSession, url: str, janus: Janus) -> dict[str, Any]:
    """Janus SIGKILLed and started again: until published again, and until a new viewer gets video."""
    janus.kill()
    killed = time.monotonic()
    janus.start()
    await until_janus_answers(http, janus)
    await _until_published(http, url, 60)
    published = time.monotonic() - killed
    receiver, _ = await watch_through_sfu(http, url, "bench")
    try:
        async with asyncio.timeout(30):
            while not receiver.video:  # noqa: ASYNC110 - filled by the receiver's reader
                await asyncio.sleep(0.02)
        watching = time.monotonic() - killed
    finally:
        await close_receivers([receiver])
    return {"published_again_s": round(published, 2), "viewer_watching_again_s": round(watching, 2)}
