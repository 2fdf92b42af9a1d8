"""Driving stages outside a paced session: rendering files as fast as the models go."""

from __future__ import annotations

import wave
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anchor.frames import AudioChunk, Frame
from anchor.runtime import Runtime
from anchor.stage import Stage, StageContext


async def run_stages(
    runtime: Runtime, stages: Sequence[Stage], frames: Sequence[Frame]
) -> AsyncGenerator[Frame, None]:
    """Push ``frames`` through ``stages`` in order (a chain), yielding what the last one emits."""
    ctx = StageContext("offline", runtime.settings, runtime.executor, runtime.engines)
    for stage in stages:
        await stage.start(ctx)
    try:

        async def through(index: int, frame: Frame) -> AsyncGenerator[Frame, None]:
            if index == len(stages):
                yield frame
                return
            async for out in stages[index].process(frame):
                async for final in through(index + 1, out):
                    yield final

        for frame in frames:
            async for out in through(0, frame):
                yield out
    finally:
        for stage in reversed(stages):
            await stage.stop()


def write_wav(path: Path, audio: npt.NDArray[np.float32], sample_rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def join_audio(chunks: Sequence[AudioChunk]) -> npt.NDArray[np.float32]:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(c.pcm, dtype=np.float32).reshape(-1) for c in chunks])
