"""Driving stages outside a paced session: rendering files as fast as the models go."""

from __future__ import annotations

import wave
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, TextDelta
from anchor.core.runtime import Runtime
from anchor.core.stage import Stage, StageContext


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


async def render_text(
    runtime: Runtime, text: str, stages: Sequence[Stage] | None = None, utterance_id: str = "text"
) -> list[AudioChunk]:
    """``text`` spoken by ``stages`` (default: the Piper voice, the teacher of ours), as fast as they go."""
    from anchor.speech.piper_stage import PiperTTS  # its import loads the phonemizer

    frames: list[Frame] = [
        TextDelta(text=text, utterance_id=utterance_id),
        EndOfUtterance(utterance_id=utterance_id),
    ]
    chain = list(stages) if stages is not None else [PiperTTS()]
    return [f async for f in run_stages(runtime, chain, frames) if isinstance(f, AudioChunk)]


def write_wav(path: Path, audio: npt.NDArray[np.float32], sample_rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    """Float32 ``[samples, channels]`` and the rate of a PCM WAV file, or ``ValueError`` saying why not."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        reason = str(exc) or "the file ends before its WAV header does"
        raise ValueError(f"{path} is not a readable PCM WAV file: {reason}") from None
    if width == 1:
        pcm = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        pcm = np.frombuffer(raw, "<i2").astype(np.float32) / 32768
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        pcm = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    elif width == 4:
        pcm = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    else:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported")
    return np.asarray(pcm, dtype=np.float32).reshape(-1, channels), rate


def join_audio(chunks: Sequence[AudioChunk]) -> npt.NDArray[np.float32]:
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(c.pcm, dtype=np.float32).reshape(-1) for c in chunks])
