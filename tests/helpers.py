"""Shared builders for runtime tests: fake graphs and readers of the paced edge."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, VideoFrame
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.pacer import Subscription
from anchor.core.session import EventStream, Session, SessionEvent
from anchor.testing.fakes import FakeFace, FakeResponder, FakeTTS, Faults

FAST = AnchorSettings(media={"width": 32, "height": 32})  # type: ignore[arg-type]
MS_PER_WORD = 40.0


def speech_graph(
    *,
    tts_faults: Faults | None = None,
    tts_timeout_s: float | None = None,
    face: bool = True,
    face_faults: Faults | None = None,
    sample_rate: int = 48000,
) -> Graph:
    responder = FakeResponder("responder")
    tts = FakeTTS(
        "tts",
        sample_rate=sample_rate,
        ms_per_word=MS_PER_WORD,
        faults=tts_faults or Faults(),
        timeout_s=tts_timeout_s,
    )
    graph = Graph().chain(responder, tts).link(tts, AUDIO_OUT)
    if face:
        f = FakeFace("face", size=(32, 32), faults=face_faults or Faults())
        graph.add(f).link(tts, f).link(f, VIDEO_OUT)
    return graph


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


@dataclass
class Tape:
    """Everything a subscriber received, in order."""

    audio: list[AudioChunk] = field(default_factory=list)
    video: list[VideoFrame] = field(default_factory=list)

    def audio_of(self, utterance_id: str) -> list[AudioChunk]:
        return [a for a in self.audio if a.utterance_id == utterance_id]

    def video_of(self, utterance_id: str) -> list[VideoFrame]:
        return [v for v in self.video if v.utterance_id == utterance_id]


@contextlib.asynccontextmanager
async def recording(session: Session, **subscribe: float) -> AsyncIterator[Tape]:
    """Record the session's paced edge; on exit close the session and finish the tape."""
    sub = session.subscribe(**subscribe)  # type: ignore[arg-type]
    tape = Tape()
    recorder = asyncio.get_running_loop().create_task(record(sub, tape), name="test:record")
    try:
        yield tape
    finally:
        await session.aclose()
        await recorder


async def record(sub: Subscription, tape: Tape) -> None:
    async def audio() -> None:
        while (a := await sub.next_audio()) is not None:
            tape.audio.append(a)

    async def video() -> None:
        while (v := await sub.next_video()) is not None:
            tape.video.append(v)

    await asyncio.gather(audio(), video())


async def next_event(
    events: EventStream, kind: str, utterance_id: str | None = None, *, guard_s: float = 10.0
) -> SessionEvent:
    """The next event of ``kind`` (for ``utterance_id``); ``guard_s`` only stops a hung test."""
    async with asyncio.timeout(guard_s):
        while (event := await events.next()) is not None:
            if event.kind == kind and (utterance_id is None or event.utterance_id == utterance_id):
                return event
    raise AssertionError(f"event stream closed before a {kind!r} event")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_opens(port: int, timeout_s: float = 10.0) -> bool:
    """Whether something starts listening on 127.0.0.1:``port`` within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


async def until(condition: Any, timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` (state kept by callbacks or another process) until true, or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():  # noqa: ASYNC110 - the state has no event to wait on
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g} s: {what or condition}") from None
