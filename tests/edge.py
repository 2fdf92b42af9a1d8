"""A served anchor session for the edge tests: fake voice, real face and look, real WebRTC server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import AudioStreamTrack

from anchor.app.settings import AppSettings
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.realtime import RealTimeClock
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.core.stage import Stage
from anchor.face.face_stage import AnimatorDriver, FaceStage
from anchor.face.look import PortraitLook
from anchor.face.portrait import default_image, fit, make_portrait
from anchor.face.rig import MouthRig
from anchor.responders import SayResponder
from anchor.testing.fakes import FakeTTS
from streams.fanout import JanusPublisher
from streams.server import WebRtcServer
from streams.settings import FanoutSettings


class Microphone(AudioStreamTrack):
    """A viewer's microphone playing ``pcm`` (48 kHz mono floats), then silence, in real time."""

    def __init__(self, pcm: npt.NDArray[np.floating]) -> None:
        super().__init__()
        self.pcm = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)
        self.sent = 0
        self._clock = RealTimeClock(48000)

    async def recv(self) -> av.AudioFrame:
        await self._clock.until(self.sent)
        block = np.zeros(960, dtype=np.int16)
        part = self.pcm[self.sent : self.sent + 960]
        block[: len(part)] = part
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.sent, Fraction(1, 48000)
        self.sent += 960
        return frame


@dataclass
class Edge:
    server: WebRtcServer
    session: Session
    url: str


@contextlib.asynccontextmanager
async def served_anchor(
    size: int = 256,
    ears: Stage | None = None,
    responder: Stage | None = None,
    load: Callable[[], float] | None = None,
    drops: Callable[[], float] = lambda: 0.0,
    fanout: FanoutSettings | None = None,
    **webrtc: Any,
) -> AsyncIterator[Edge]:
    """``ears``: a root stage for viewer audio (the recognizer's place), when the test needs one;
    ``responder``: what answers (default: one that only reads ``say`` lines); ``load``, ``drops``:
    admission's signals (CPU share measured; no drops, so a loaded test machine refuses no one);
    ``fanout``: publish the program into Janus too (watching viewers then use ``/fanout``)."""
    settings = AppSettings(
        media={"width": size, "height": size},  # type: ignore[arg-type]
        webrtc={"port": 0, **webrtc},  # type: ignore[arg-type]
    )
    portrait = make_portrait(fit(default_image(), (size, size)))
    tts = FakeTTS("tts", ms_per_word=150)
    face = FaceStage(AnimatorDriver(MouthRig(portrait)))
    graph = Graph().chain(responder or SayResponder(), tts).link(tts, AUDIO_OUT)
    graph.add(face).link(tts, face).link(face, VIDEO_OUT)
    if ears is not None:
        graph.add(ears)
    async with Runtime(settings) as rt, contextlib.AsyncExitStack() as parts:
        session = await rt.open_session(graph, session_id="main", look=PortraitLook(portrait))
        fanouts = {}
        if fanout is not None:
            fanouts["main"] = JanusPublisher(session, fanout, name="main")
            fanouts["main"].start()
            parts.push_async_callback(fanouts["main"].stop)
        server = WebRtcServer(
            settings.webrtc,
            {"main": session},
            default_session="main",
            load=load,
            drops=drops,
            fanouts=fanouts,
            registry=rt.metrics.registry,
        )
        await server.start()
        try:
            yield Edge(server, session, server.url)
        finally:
            await server.close()
