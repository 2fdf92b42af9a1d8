"""The synthetic viewer of ``anchor bench e2e``: a separate process, an aiortc peer on loopback.

It talks to a served anchor like a person at the page does (``/offer``
with its microphone, ``/news``, ``/say``, ``/interrupt``) and measures only
what it receives, on its own clock:

- ``voice_to_voice_ms``: the last sample of a spoken question (espeak-ng,
  not our voice) handed to its WebRTC track -> the first reply audio packet
  received;
- ``first_mouth_frame_ms``: the same start -> the first received video frame
  whose mouth is open beyond anything the idle look shows (the darkening of
  the mouth area, ``mouth_opening``, above its idle maximum);
- ``av_offset_ms``: how much later the mouth moves than the sound, over the
  first 3 s of each reply: the lag (10 ms steps, within 200 ms) that best
  correlates the received mouth opening with the received audio envelope,
  both placed on the sender's clock by their RTP timestamps and RTCP sender
  reports, as a player that keeps lip sync (every browser) places them;
- ``av_arrival_skew_ms``: first mouth frame minus first reply audio packet by
  arrival time at this receiver (transport and jitter buffers included; what
  a player without lip sync would show);
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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from anchor.bench.espeak import espeak
from anchor.core.aio import cancel_and_wait
from anchor.core.realtime import RealTimeClock
from anchor.core.resample import resample
from anchor.face.animator import mouth_opening
from anchor.face.look import PortraitLook
from anchor.face.portrait import Portrait, default_image, fit, make_portrait
from anchor.testing.quality import best_lag
from streams.aiortc_compat import allow_loopback_candidates, on_sender_report, rtp_origin

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


class Mouthpiece(AudioStreamTrack):
    """The viewer's microphone: silence, or the clip it was told to say, in real time."""

    def __init__(self) -> None:
        super().__init__()
        self._clip = np.zeros(0, dtype=np.int16)
        self._pos = 0
        self._sent = 0
        self._clock = RealTimeClock(48000)
        self.finished = asyncio.Event()
        self.ended_at = 0.0

    def speak(self, pcm: npt.NDArray[np.float32]) -> None:
        self._clip = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        self._pos = 0
        self.finished.clear()

    async def recv(self) -> av.AudioFrame:
        await self._clock.until(self._sent)
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


def idle_opening_limit(portrait: Portrait, seconds: float = 30.0, margin: float = 1.5) -> float:
    """The most the idle look (blinks, sway, breathing) ever darkens the mouth area, plus a codec margin.

    A received frame above it shows a mouth that speech opened.
    """
    look = PortraitLook(portrait)
    return max(mouth_opening(look.idle_frame(t), portrait) for t in np.arange(0, seconds, 0.04)) + margin


class SenderClock:
    """Decoded frame pts -> sender wall time per media kind, from the latest RTCP sender report.

    aiortc keeps both halves of that mapping to itself (``streams.aiortc_compat``).
    """

    RATES: ClassVar[dict[str, int]] = {"audio": 48000, "video": 90000}

    def __init__(self) -> None:
        self.reports: dict[str, tuple[float, int]] = {}
        self.receivers: dict[str, RTCRtpReceiver] = {}

    def listen(self, receiver: RTCRtpReceiver, kind: str) -> None:
        self.receivers[kind] = receiver

        def noted(ntp: float, rtp: int) -> None:
            self.reports[kind] = (ntp, rtp)

        on_sender_report(receiver, noted)

    def seconds(self, kind: str, pts: int) -> float | None:
        report = self.reports.get(kind)
        receiver = self.receivers.get(kind)
        origin = None if receiver is None else rtp_origin(receiver)
        if report is None or origin is None:
            return None
        ntp, base = report
        delta = (origin + pts - base + 2**31) % 2**32 - 2**31
        return ntp + delta / self.RATES[kind]


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    value: float
    rtp: int


class Reception:
    """What arrives: per audio packet its rms, per video frame its mouth level, with times and RTP."""

    def __init__(self, portrait: Portrait) -> None:
        self.portrait = portrait
        self.audio: list[Arrival] = []
        self.video: list[Arrival] = []
        self.changed = asyncio.Event()
        self.clock = SenderClock()

    async def read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                rtp = int(frame.pts or 0)
                if track.kind == "audio":
                    pcm = frame.to_ndarray().astype(np.float32) / 32768  # type: ignore[union-attr]
                    self.audio.append(Arrival(now, float(np.sqrt(np.mean(pcm**2))), rtp))
                else:
                    rgb = frame.to_ndarray(format="rgb24")  # type: ignore[union-attr]
                    self.video.append(Arrival(now, mouth_opening(rgb, self.portrait), rtp))
                self.changed.set()
        except MediaStreamError:
            return

    async def until(self, found: Callable[[], Arrival | None], timeout_s: float) -> Arrival:
        async with asyncio.timeout(timeout_s):
            while (at := found()) is None:
                self.changed.clear()
                await self.changed.wait()
        return at

    def first_audio(self, after: float) -> Arrival | None:
        return next((a for a in self.audio if a.at > after and a.value > SPEECH_RMS), None)

    def first_silence(self, after: float) -> Arrival | None:
        run: Arrival | None = None
        for a in self.audio:
            if a.at <= after:
                continue
            if a.value <= SPEECH_RMS:
                run = run or a
                if a.at - run.at >= QUIET_S:
                    return run
            else:
                run = None
        return None

    def quiet_since(self, seconds: float) -> bool:
        if not self.audio:
            return False
        latest = self.audio[-1].at
        return all(a.value <= SPEECH_RMS for a in self.audio if a.at > latest - seconds)

    def mouth_moving(self, after: float, limit: float) -> Arrival | None:
        return next((v for v in self.video if v.at > after and v.value > limit), None)

    def lip_sync_lag_s(self, onset: Arrival, seconds: float = 3.0, reach_s: float = 0.2) -> float | None:
        """The lag of mouth opening behind the audio envelope from ``onset`` on (None before reports)."""
        start = self.clock.seconds("audio", onset.rtp)
        if start is None:
            return None
        step = 0.01
        grid = start - reach_s + step * np.arange(int((seconds + 2 * reach_s) / step), dtype=np.float64)
        envelope = self._on_grid("audio", self.audio, 0.02, grid)
        opening = self._on_grid("video", self.video, 0.04, grid)
        if envelope is None or opening is None:
            return None
        lag, _ = best_lag(opening, envelope, reach=int(reach_s / step))
        return lag * step

    def _on_grid(
        self, kind: str, arrivals: list[Arrival], span_s: float, grid: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64] | None:
        """Each grid time's value: that of the packet or frame (on the sender clock) that covers it."""
        values = np.zeros(len(grid))
        for a in arrivals:
            at = self.clock.seconds(kind, a.rtp)
            if at is None:
                return None
            values[(grid >= at) & (grid < at + span_s)] = a.value
        return values


class Viewer:
    def __init__(self, url: str, reception: Reception, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.reception = reception
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


async def measure(url: str, rounds: int, size: tuple[int, int]) -> dict[str, Any]:
    """``size``: the anchor's picture (width, height); its default portrait is found in it the same way."""
    portrait = make_portrait(fit(default_image(), size))
    reception = Reception(portrait)
    limit = idle_opening_limit(portrait)
    mic = Mouthpiece()
    clips = [resample(espeak(q, 165, 50), 16000, 48000) for q in QUESTIONS]
    allow_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver(mic, direction="sendrecv")
    readers: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: readers.append(asyncio.ensure_future(reception.read(track))))
    for transceiver in pc.getTransceivers():
        reception.clock.listen(transceiver.receiver, transceiver.kind)
    results: dict[str, list[float]] = {
        "voice_to_voice_ms": [],
        "first_mouth_frame_ms": [],
        "av_offset_ms": [],
        "av_arrival_skew_ms": [],
        "news_to_audio_ms": [],
        "interrupt_to_silence_ms": [],
    }
    async with aiohttp.ClientSession() as http:
        viewer = Viewer(url, reception, http)
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(f"{url}/offer", json=offer) as response:
            answer = await response.json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        try:
            await viewer.settle(3.0)
            for n in range(rounds):
                mic.speak(clips[n % len(clips)])
                await mic.finished.wait()
                end = mic.ended_at
                heard = await reception.until(partial(reception.first_audio, end), 30)
                mouth = await reception.until(partial(reception.mouth_moving, end, limit), 10)
                results["voice_to_voice_ms"].append((heard.at - end) * 1000)
                results["first_mouth_frame_ms"].append((mouth.at - end) * 1000)
                results["av_arrival_skew_ms"].append((mouth.at - heard.at) * 1000)
                await viewer.settle()
                if (lag := reception.lip_sync_lag_s(heard)) is not None:
                    results["av_offset_ms"].append(lag * 1000)
            for n in range(rounds):
                item = {"title": f"Bulletin {n + 1}", "body": "Markets closed higher.", "priority": 5}
                sent = await viewer.post("/news", item)
                heard = await reception.until(partial(reception.first_audio, sent), 30)
                results["news_to_audio_ms"].append((heard.at - sent) * 1000)
                await viewer.settle()
            for _ in range(rounds):
                said = await viewer.post("/say", {"text": "Good evening. " * 20})
                began = await reception.until(partial(reception.first_audio, said), 30)
                await asyncio.sleep(0.8 - (time.monotonic() - began.at))
                cut = await viewer.post("/interrupt", {})
                quiet = await reception.until(partial(reception.first_silence, cut), 10)
                results["interrupt_to_silence_ms"].append((quiet.at - cut) * 1000)
                await viewer.settle(1.0)
        finally:
            await pc.close()
            await cancel_and_wait(readers, 5.0)
    return {"rounds": rounds, "questions": QUESTIONS, "samples": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchor.bench.viewer", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.url.rstrip("/"), args.rounds, tuple(args.size)))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
