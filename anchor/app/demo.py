"""``anchor demo``: a real session speaking with the default voice, paced in real time.

Say -> the configured voice (``voice`` settings; engines through the hub) -> the paced edge, recorded
to a WAV file, with each utterance's spans printed: an audio-only check of
the runtime that needs no browser (``anchor run`` is the anchor to watch).
"""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path
from typing import Any

import numpy as np

from anchor.core.aio import cancel_and_wait
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.pacer import Subscription
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.responders import SayResponder
from anchor.speech.voices import Voice, resolve_voice


async def _record(sub: Subscription, out: wave.Wave_write, finished: asyncio.Event, tail_frames: int) -> int:
    """Write released program audio until ``tail_frames`` frames after ``finished``."""
    frames = after = 0
    while (chunk := await sub.next_audio()) is not None:
        out.writeframes(_to_int16(chunk))
        frames += 1
        if finished.is_set():
            after += 1
            if after >= tail_frames:
                break
    return frames


def _to_int16(chunk: AudioChunk) -> bytes:
    pcm = np.clip(np.asarray(chunk.pcm), -1.0, 1.0)
    return (pcm * 32767).astype("<i2").tobytes()


async def _speak_all(session: Session, texts: list[str], finished: asyncio.Event) -> None:
    events = session.events()
    pending = {await session.say(text) for text in texts}
    async for event in events:
        if event.kind == "utterance_finished":
            pending.discard(event.utterance_id)
            if not pending:
                break
    finished.set()


def voice_graph(voice: Voice) -> Graph:
    """Read scripts aloud with ``voice``."""
    speech = voice.stages()
    return Graph().chain(SayResponder(), *speech).link(speech[-1], AUDIO_OUT)


async def run_demo(
    settings: AnchorSettings, texts: list[str], wav_path: Path, tail_s: float = 0.5
) -> dict[str, Any]:
    media = settings.media
    tail_frames = max(1, round(tail_s * 1000 / media.audio_frame_ms))
    voice = await asyncio.to_thread(resolve_voice, settings)
    async with Runtime(settings) as runtime:
        session = await runtime.open_session(voice_graph(voice))
        sub = session.subscribe(audio_ms=120_000)
        finished = asyncio.Event()
        with wave.open(str(wav_path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(media.sample_rate)
            recorder = asyncio.get_running_loop().create_task(
                _record(sub, out, finished, tail_frames), name="demo:record"
            )
            try:
                await _speak_all(session, texts, finished)
                frames = await recorder
            finally:
                await cancel_and_wait([recorder], settings.graph.cancel_timeout_s)
                await runtime.close_session(session.id)
        dump = runtime.metrics.dump()
        dump["prometheus"] = runtime.metrics.prometheus_text()
        dump["recorded_frames"] = frames
        dump["wav"] = str(wav_path)
        return dump
