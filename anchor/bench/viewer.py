"""The synthetic viewer of ``anchor bench e2e``: a separate process, an aiortc peer on loopback.

It talks to a served anchor like a person at the page does (``/offer``
with its microphone, ``/news``, ``/say``, ``/interrupt``) and measures only
what it receives, on its own clock:

- ``voice_to_voice_ms``: the last sample of a spoken question (espeak-ng,
  not our voice) handed to its WebRTC track -> the first reply audio packet
  received;
- ``first_mouth_frame_ms``: the same start -> the first received video frame
  whose mouth region left its idle range;
- ``av_offset_ms``: that frame's arrival minus the first reply audio's;
- ``news_to_audio_ms``: ``POST /news`` sent -> the first audio packet of the
  item received;
- ``interrupt_to_silence_ms``: ``POST /interrupt`` sent -> the first received
  audio packet that is silent (and stays so for 100 ms).

Usage: ``python -m anchor.bench.viewer URL --rounds N --out FILE.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from anchor.face.portrait import Portrait, default_image, fit, make_portrait
from anchor.speech.resample import resample
from streams.ice import allow_loopback_candidates

QUESTIONS = [
    "Who are you?",
    "What can you do?",
    "What is the weather like today?",
    "How do I send you a news story?",
    "How do you work?",
    "Hello there.",
]
SPEECH_RMS = 0.004  # received audio above this is speech (idle is digital silence)
QUIET_S = 0.1


def espeak(text: str) -> npt.NDArray[np.float32]:
    """``text`` spoken by Debian's espeak-ng, 48 kHz mono float."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("the synthetic viewer needs espeak-ng (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.wav"
        subprocess.run([binary, "-v", "en-us", "-s", "165", "-w", str(path), text], check=True)
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            rate = stream.rate
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    if pcm.dtype == np.int16:
        pcm = pcm.astype(np.float32) / 32768
    return resample(pcm.astype(np.float32), rate, 48000)


class Mouthpiece(AudioStreamTrack):
    """The viewer's microphone: silence, or the clip it was told to say, in real time."""

    def __init__(self) -> None:
        super().__init__()
        self._clip = np.zeros(0, dtype=np.int16)
        self._pos = 0
        self._sent = 0
        self._t0 = 0.0
        self.finished = asyncio.Event()
        self.ended_at = 0.0

    def speak(self, pcm: npt.NDArray[np.float32]) -> None:
        self._clip = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        self._pos = 0
        self.finished.clear()

    async def recv(self) -> av.AudioFrame:
        if self._sent == 0:
            self._t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self._t0 + self._sent / 48000 - time.monotonic()))
        block = np.zeros(960, dtype=np.int16)
        if self._pos < len(self._clip):
            part = self._clip[self._pos : self._pos + 960]
            block[: len(part)] = part
            self._pos += 960
            if self._pos >= len(self._clip):
                self.ended_at = time.monotonic()
                self.finished.set()
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._sent, Fraction(1, 48000)
        self._sent += 960
        return frame


def mouth_region(portrait: Portrait) -> tuple[slice, slice]:
    m = portrait.mouth
    top, bottom = int(m.y - 0.25 * m.half_width), int(m.y + 0.6 * m.chin)
    return slice(max(0, top), bottom), slice(int(m.cx - m.half_width), int(m.cx + m.half_width))


class Reception:
    """What arrives: (time, audio rms) per packet, (time, mouth level) per video frame."""

    def __init__(self, region: tuple[slice, slice]) -> None:
        self.region = region
        self.audio: list[tuple[float, float]] = []
        self.video: list[tuple[float, float]] = []
        self.changed = asyncio.Event()

    async def read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    pcm = frame.to_ndarray().astype(np.float32) / 32768  # type: ignore[union-attr]
                    self.audio.append((now, float(np.sqrt(np.mean(pcm**2)))))
                else:
                    rgb = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                    self.video.append((now, float(rgb[self.region].mean())))
                self.changed.set()
        except MediaStreamError:
            return

    async def until(self, found: Callable[[], float | None], timeout_s: float) -> float:
        async with asyncio.timeout(timeout_s):
            while (at := found()) is None:
                self.changed.clear()
                await self.changed.wait()
        return at

    def first_audio(self, after: float) -> float | None:
        return next((t for t, rms in self.audio if t > after and rms > SPEECH_RMS), None)

    def first_silence(self, after: float) -> float | None:
        run: float | None = None
        for t, rms in self.audio:
            if t <= after:
                continue
            if rms <= SPEECH_RMS:
                run = t if run is None else run
                if t - run >= QUIET_S:
                    return run
            else:
                run = None
        return None

    def quiet_since(self, seconds: float) -> bool:
        if not self.audio:
            return False
        latest = self.audio[-1][0]
        return all(rms <= SPEECH_RMS for t, rms in self.audio if t > latest - seconds)

    def mouth_moving(self, after: float, idle: tuple[float, float]) -> float | None:
        low, high = idle
        return next((t for t, level in self.video if t > after and not low <= level <= high), None)


class Viewer:
    def __init__(self, url: str, reception: Reception, mic: Mouthpiece, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.reception = reception
        self.mic = mic
        self.http = http

    async def post(self, path: str, body: dict[str, Any]) -> float:
        sent = time.monotonic()
        async with self.http.post(f"{self.url}{path}", json=body) as response:
            if response.status >= 300:
                raise RuntimeError(f"{path} answered {response.status}: {await response.text()}")
        return sent

    async def settle(self, quiet_s: float = 2.5, timeout_s: float = 60) -> None:
        """Until the anchor has been silent for ``quiet_s``."""
        async with asyncio.timeout(timeout_s):
            while not self.reception.quiet_since(quiet_s):  # noqa: ASYNC110 - polls arrivals
                await asyncio.sleep(0.1)


async def measure(url: str, rounds: int) -> dict[str, Any]:
    portrait = make_portrait(fit(default_image(), (512, 512)))
    reception = Reception(mouth_region(portrait))
    mic = Mouthpiece()
    clips = [espeak(q) for q in QUESTIONS]
    allow_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver(mic, direction="sendrecv")
    readers: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: readers.append(asyncio.ensure_future(reception.read(track))))
    results: dict[str, list[float]] = {
        "voice_to_voice_ms": [],
        "first_mouth_frame_ms": [],
        "av_offset_ms": [],
        "news_to_audio_ms": [],
        "interrupt_to_silence_ms": [],
    }
    async with aiohttp.ClientSession() as http:
        viewer = Viewer(url, reception, mic, http)
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{url}/offer", json=offer) as response:
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        try:
            await viewer.settle(3.0)
            levels = [level for _, level in reception.video[-50:]]
            spread = max(levels) - min(levels)
            idle = (min(levels) - max(2.0, spread), max(levels) + max(2.0, spread))
            for n in range(rounds):
                mic.speak(clips[n % len(clips)])
                await mic.finished.wait()
                end = mic.ended_at
                heard = await reception.until(partial(reception.first_audio, end), 30)
                mouth = await reception.until(partial(reception.mouth_moving, end, idle), 10)
                results["voice_to_voice_ms"].append((heard - end) * 1000)
                results["first_mouth_frame_ms"].append((mouth - end) * 1000)
                results["av_offset_ms"].append((mouth - heard) * 1000)
                await viewer.settle()
            for n in range(rounds):
                item = {"title": f"Bulletin {n + 1}", "body": "Markets closed higher.", "priority": 5}
                sent = await viewer.post("/news", item)
                heard = await reception.until(partial(reception.first_audio, sent), 30)
                results["news_to_audio_ms"].append((heard - sent) * 1000)
                await viewer.settle()
            for _ in range(rounds):
                said = await viewer.post("/say", {"text": "Good evening. " * 20})
                began = await reception.until(partial(reception.first_audio, said), 30)
                await asyncio.sleep(0.8 - (time.monotonic() - began))
                cut = await viewer.post("/interrupt", {})
                quiet = await reception.until(partial(reception.first_silence, cut), 10)
                results["interrupt_to_silence_ms"].append((quiet - cut) * 1000)
                await viewer.settle(1.0)
        finally:
            await pc.close()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return {"rounds": rounds, "questions": QUESTIONS, "samples": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchor.bench.viewer", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.url.rstrip("/"), args.rounds))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
