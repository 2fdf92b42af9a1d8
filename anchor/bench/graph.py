"""``anchor bench graph``: the runtime's own overhead, with zero-latency fake stages.

Each round: ``say`` -> the first frame of that utterance received by a
subscriber of the paced edge (first-audio overhead), then ``interrupt`` ->
the first silent frame received by that subscriber (interrupt-to-silence).
What is measured is the graph, channels, control lane and pacer themselves.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

from anchor.core.config import AnchorSettings
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.pacer import Subscription
from anchor.core.runtime import Runtime
from anchor.core.stats import summarize
from anchor.testing.fakes import FakeFace, FakeResponder, FakeTTS

_TEXT = " ".join(f"word{i}" for i in range(24))


def fake_graph(settings: AnchorSettings) -> Graph:
    """Say -> text -> tone TTS -> audio out, and TTS -> face -> video out."""
    media = settings.media
    responder = FakeResponder("responder")
    tts = FakeTTS("tts", sample_rate=media.sample_rate)
    face = FakeFace("face", fps=media.fps, size=(media.height, media.width))
    graph = Graph().chain(responder, tts).link(tts, AUDIO_OUT)
    return graph.add(face).link(tts, face).link(face, VIDEO_OUT)


async def _until_audio(sub: Subscription, utterance_id: str) -> int:
    while (frame := await sub.next_audio()) is not None:
        if frame.utterance_id == utterance_id:
            return time.monotonic_ns()
    raise RuntimeError("session closed during the benchmark")


async def bench_graph(settings: AnchorSettings, *, rounds: int = 200, warmup: int = 20) -> dict[str, Any]:
    first_audio: list[float] = []
    to_silence: list[float] = []
    async with Runtime(settings) as runtime:
        session = await runtime.open_session(fake_graph(settings))
        sub = session.subscribe()
        for i in range(warmup + rounds):
            await _until_audio(sub, "")  # settle into idle
            sub.discard_queued()
            t_say = time.monotonic_ns()
            uid = await session.say(_TEXT)
            t_audio = await _until_audio(sub, uid)
            t_interrupt = time.monotonic_ns()
            await session.interrupt("bench")
            t_silence = await _until_audio(sub, "")
            if i >= warmup:
                first_audio.append((t_audio - t_say) / 1e6)
                to_silence.append((t_silence - t_interrupt) / 1e6)
        dump = runtime.metrics.dump()
    return {
        "bench": "graph",
        "rounds": rounds,
        "warmup": warmup,
        "overhead_first_audio_ms": summarize(first_audio),
        "interrupt_to_silence_ms": summarize(to_silence),
        "stage_ms": dump["summary"]["stage_ms"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "media": settings.media.model_dump(),
    }
