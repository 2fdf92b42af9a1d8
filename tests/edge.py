"""A served anchor session for the edge tests: fake voice, real face and look, real WebRTC server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anchor import AUDIO_OUT, VIDEO_OUT, AnchorSettings, Graph, Runtime
from anchor.face.animator import MouthRenderer
from anchor.face.look import PortraitLook
from anchor.face.portrait import default_image, fit, make_portrait
from anchor.face.stage import AnimatorDriver, FaceStage
from anchor.fakes import FakeTTS
from anchor.responders import SayResponder
from anchor.session import Session
from anchor.stage import Stage
from streams.server import WebRtcServer


@dataclass
class Edge:
    server: WebRtcServer
    session: Session
    url: str


@contextlib.asynccontextmanager
async def served_anchor(size: int = 256, ears: Stage | None = None, **webrtc: Any) -> AsyncIterator[Edge]:
    """``ears``: a root stage for viewer audio (the recognizer's place), when the test needs one."""
    settings = AnchorSettings(
        media={"width": size, "height": size},  # type: ignore[arg-type]
        webrtc={"port": 0, **webrtc},  # type: ignore[arg-type]
    )
    portrait = make_portrait(fit(default_image(), (size, size)))
    tts = FakeTTS("tts", ms_per_word=150)
    face = FaceStage(AnimatorDriver(MouthRenderer(portrait)))
    graph = Graph().chain(SayResponder(), tts).link(tts, AUDIO_OUT)
    graph.add(face).link(tts, face).link(face, VIDEO_OUT)
    if ears is not None:
        graph.add(ears)
    async with Runtime(settings) as rt:
        session = await rt.open_session(graph, session_id="main", look=PortraitLook(portrait))
        server = WebRtcServer(settings.webrtc, {"main": session}, default_session="main")
        await server.start()
        try:
            yield Edge(server, session, server.url)
        finally:
            await server.close()
