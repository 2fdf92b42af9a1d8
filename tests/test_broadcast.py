"""Broadcast outputs: RTMP into a real nginx-rtmp (checked with ffprobe), MP4 beside live WebRTC viewers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from anchor.core.frames import AudioChunk, VideoFrame
from streams.recorder import ProgramRecorder
from tests.edge import served_anchor
from tests.helpers import free_port, port_opens
from tests.test_webrtc import connect, until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
FFPROBE = shutil.which("ffprobe")
RATE, FPS, SIZE = 48000, 25, 128
SYNC_AT_S = (1.0, 2.2)  # a white flash and a beep, at the same program time


class SyncFeed:
    """A program of ``seconds``: dark frames and silence, with flash + beep marks at ``SYNC_AT_S``."""

    def __init__(self, seconds: float, start_pts: int = 96_000) -> None:
        self.start = start_pts  # the program clock need not start at zero
        self.audio_left = int(seconds * 50)
        self.video_left = int(seconds * FPS)
        self._a = self._v = 0

    async def next_audio(self) -> AudioChunk | None:
        if self._a >= self.audio_left:
            return None
        t = np.arange(960) / RATE + self._a * 0.02
        beep = np.zeros(960, dtype=np.float32)
        for mark in SYNC_AT_S:
            on = (t >= mark) & (t < mark + 0.1)
            beep[on] = 0.5 * np.sin(2 * np.pi * 1000 * t[on])
        self._a += 1
        await asyncio.sleep(0)
        return AudioChunk(pcm=beep, sample_rate=RATE, pts=self.start + (self._a - 1) * 960)

    async def next_video(self) -> VideoFrame | None:
        if self._v >= self.video_left:
            return None
        t = self._v / FPS
        lit = any(mark <= t < mark + 0.1 for mark in SYNC_AT_S)
        image = np.full((SIZE, SIZE, 3), 235 if lit else 20, dtype=np.uint8)
        self._v += 1
        await asyncio.sleep(0)
        return VideoFrame(
            image=image, index=self._v - 1, fps=Fraction(FPS), sample_rate=RATE, offset=self.start
        )


def sync_offsets_ms(path: Path) -> list[float]:
    """Per mark: (flash time - beep time) in ms, read back from the file's own timestamps."""
    flashes, beeps = [], []
    with av.open(str(path)) as container:
        lit = False
        for frame in container.decode(video=0):
            bright = float(frame.to_ndarray(format="gray").mean()) > 128
            if bright and not lit:
                flashes.append(float(frame.pts * frame.time_base))
            lit = bright
        container.seek(0)
        parts, start = [], None
        for frame in container.decode(audio=0):
            start = float(frame.pts * frame.time_base) if start is None else start
            parts.append(
                frame.to_ndarray().reshape(len(frame.layout.channels), -1)[0]
                if frame.format.is_planar
                else frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
            )
        pcm = np.abs(np.concatenate(parts).astype(np.float64))
        rate = container.streams.audio[0].sample_rate
    loud = pcm > 0.1 * pcm.max()
    onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    for k in onsets:
        if not beeps or k / rate + (start or 0.0) - beeps[-1] > 0.3:  # one onset per beep
            beeps.append((start or 0.0) + k / rate)
    assert len(flashes) == len(beeps) == len(SYNC_AT_S), (flashes, beeps)
    return [1000 * (f - b) for f, b in zip(flashes, beeps, strict=True)]


@pytest.fixture
def nginx_rtmp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if NGINX is None or not RTMP_MODULE.exists() or FFPROBE is None:
        pytest.skip("needs nginx with libnginx-mod-rtmp and ffmpeg (CI installs them)")
    port = free_port()
    record = tmp_path / "record"
    record.mkdir()
    as_root = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {RTMP_MODULE};\n{as_root}daemon off;\nworker_processes 1;\n"
        f"error_log {tmp_path / 'error.log'};\npid {tmp_path / 'nginx.pid'};\n"
        "events { worker_connections 64; }\n"
        f"rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; "
        f"record all; record_path {record}; record_unique off; }} }} }}\n"
    )
    process = subprocess.Popen([str(NGINX), "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    if not port_opens(port):
        process.kill()
        raise RuntimeError(f"nginx did not start: {process.stderr.read() if process.stderr else ''!r}")
    try:
        yield f"rtmp://127.0.0.1:{port}/live/anchor", record / "anchor.flv"
    finally:
        process.terminate()
        process.wait(10)


def _probe(recorded: Path, seconds: float = 3.0) -> dict[str, Any] | None:
    """ffprobe's streams and format of ``recorded`` once it holds both tracks and ``seconds`` of program."""
    if not recorded.exists() or recorded.stat().st_size == 0:
        return None
    ran = subprocess.run(
        [str(FFPROBE), "-v", "error", "-show_streams", "-show_format", "-of", "json", str(recorded)],
        capture_output=True,
        check=False,
    )
    probe: dict[str, Any] = json.loads(ran.stdout or b"{}")
    kinds = {s.get("codec_type") for s in probe.get("streams", [])}
    duration = float(probe.get("format", {}).get("duration", 0) or 0)
    return probe if ran.returncode == 0 and {"audio", "video"} <= kinds and duration >= seconds else None


async def test_rtmp_reaches_nginx_with_both_tracks_at_25_fps_in_sync(nginx_rtmp: tuple[str, Path]) -> None:
    url, recorded = nginx_rtmp
    recorder = ProgramRecorder(SyncFeed(3.2), url, width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE)
    await recorder.start()
    async with asyncio.timeout(30):
        await recorder.drained()
    await recorder.stop()
    async with asyncio.timeout(10):
        # nginx finishes the recording after the publisher left: wait until the whole program is in it.
        while (probe := await asyncio.to_thread(_probe, recorded)) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert streams["video"]["r_frame_rate"] == "25/1"
    assert (streams["video"]["width"], streams["video"]["height"]) == (SIZE, SIZE)
    offsets = sync_offsets_ms(recorded)
    assert all(abs(o) < 40 for o in offsets), offsets


async def test_mp4_records_the_session_while_webrtc_viewers_watch(tmp_path: Path) -> None:
    async with served_anchor(256) as edge:
        feed = edge.session.subscribe(audio_ms=2000, video_frames=50)
        recorder = ProgramRecorder(
            feed, tmp_path / "program.mp4", width=256, height=256, fps=25, sample_rate=48000
        )
        await recorder.start()
        viewer = await connect(edge.url)
        try:
            await edge.session.say("one two three four five")
            await until(lambda: len(viewer.video) >= 60)
        finally:
            await viewer.close()
            # End the feed, then let the recorder write all it was given (however far a loaded CPU left
            # its encoders behind), so the file's two tracks end where the program did.
            edge.session.unsubscribe(feed)
            async with asyncio.timeout(30):
                await recorder.drained()
            await recorder.stop()
    with av.open(str(tmp_path / "program.mp4")) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("h264", "aac")
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 50 and recorder.video_frames == frames
    assert abs(recorder.audio_samples / 48000 - recorder.video_frames / 25) < 0.1


@pytest.fixture
def nginx_hls(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """deploy/nginx/hls.conf as shipped, on free loopback ports, writing HLS under ``tmp_path``."""
    if NGINX is None or not RTMP_MODULE.exists() or FFPROBE is None:
        pytest.skip("needs nginx with libnginx-mod-rtmp and ffmpeg (CI installs them)")
    rtmp_port, http_port = free_port(), free_port()
    hls = tmp_path / "hls"
    hls.mkdir()
    conf = (Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "hls.conf").read_text()
    for shipped, here in (
        ("listen 1935;", f"listen 127.0.0.1:{rtmp_port};"),
        ("listen 8088;", f"listen 127.0.0.1:{http_port};"),
        ("/var/lib/anchor-hls", str(hls)),
        ("http {", f"http {{\n    access_log {tmp_path / 'access.log'};"),
    ):
        assert shipped in conf, f"deploy/nginx/hls.conf no longer has {shipped!r}"
        conf = conf.replace(shipped, here)
    as_root = "user root;\n" if os.geteuid() == 0 else ""
    header = f"{as_root}daemon off;\nerror_log {tmp_path / 'error.log'};\npid {tmp_path / 'nginx.pid'};\n"
    config = tmp_path / "nginx.conf"
    config.write_text(conf.replace("worker_processes 1;", f"worker_processes 1;\n{header}"))
    process = subprocess.Popen([str(NGINX), "-c", str(config), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    if not port_opens(rtmp_port) or not port_opens(http_port):
        process.kill()
        raise RuntimeError(f"nginx did not start: {process.stderr.read() if process.stderr else ''!r}")
    try:
        yield f"rtmp://127.0.0.1:{rtmp_port}/live/anchor", f"http://127.0.0.1:{http_port}/hls", hls
    finally:
        process.terminate()
        process.wait(10)


def _ffprobe_url(url: str) -> dict[str, Any]:
    ran = subprocess.run(
        [str(FFPROBE), "-v", "error", "-show_streams", "-show_format", "-of", "json", url],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    probe: dict[str, Any] = json.loads(ran.stdout)
    return probe


async def test_the_broadcast_comes_out_as_hls_that_ffprobe_reads_over_http(
    nginx_hls: tuple[str, str, Path],
) -> None:
    rtmp, http, _ = nginx_hls
    recorder = ProgramRecorder(SyncFeed(9.0), rtmp, width=SIZE, height=SIZE, fps=FPS, sample_rate=RATE)
    await recorder.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with asyncio.timeout(30):
                while True:  # three 2 s fragments listed
                    async with client.get(f"{http}/anchor.m3u8") as r:
                        playlist = await r.text() if r.status == 200 else ""
                        headers = r.headers
                    if playlist.count("#EXTINF") >= 3:
                        break
                    await asyncio.sleep(0.2)
            assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
            assert headers["Cache-Control"] == "no-cache", "a CDN asks for the playlist again each time"
            segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
            durations = [
                float(line.split(":")[1].rstrip(","))
                for line in playlist.splitlines()
                if line.startswith("#EXTINF")
            ]
            async with client.get(f"{http}/{segments[0]}") as r:
                assert r.status == 200 and r.headers["Content-Type"] == "video/mp2t"
                assert r.headers["Cache-Control"] == "public, max-age=60"
        assert all(1.5 <= d <= 2.5 for d in durations), durations
        probe = await asyncio.to_thread(_ffprobe_url, f"{http}/anchor.m3u8")
        streams = {s["codec_type"]: s for s in probe["streams"]}
        assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
        assert (streams["video"]["width"], streams["video"]["height"]) == (SIZE, SIZE)
        for segment in segments:
            probe = await asyncio.to_thread(_ffprobe_url, f"{http}/{segment}")
            assert {s["codec_type"] for s in probe["streams"]} == {"video", "audio"}
            assert 1.5 <= float(probe["format"]["duration"]) <= 2.6, probe["format"]
    finally:
        await recorder.stop()
