"""The voice under hostile text: nothing crashes, nothing buffers without bound."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from anchor.app.offline import run_stages
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, TextDelta
from anchor.core.runtime import Runtime
from anchor.speech.piper_stage import PiperTTS


@pytest.fixture
async def runtime(engine_cache: Path):  # type: ignore[no-untyped-def]
    async with Runtime(AnchorSettings(engines={"cache_dir": engine_cache})) as rt:  # type: ignore[arg-type]
        yield rt


async def speak(runtime: Runtime, deltas: list[str]) -> list[AudioChunk]:
    frames: list[Frame] = [TextDelta(text=d, utterance_id="u") for d in deltas]
    frames.append(EndOfUtterance(utterance_id="u"))
    return [f async for f in run_stages(runtime, [PiperTTS()], frames) if isinstance(f, AudioChunk)]


@pytest.mark.parametrize("text", ["", "   ", "😀🎉✅", "\x00\x07\x1b\x7f", "中文 русский العربية", "...!?,;"])
async def test_unspeakable_text_gives_silence_not_an_error(runtime: Runtime, text: str) -> None:
    chunks = await speak(runtime, [text])
    assert sum(c.num_samples for c in chunks) < 48000 * 0.3, "at most a breath of audio"


async def test_mixed_garbage_still_speaks_the_english(runtime: Runtime) -> None:
    chunks = await speak(runtime, ["Markets 📈 rose\x07 today", " — 中文 — and closed higher."])
    audio = np.concatenate([c.pcm for c in chunks])
    assert len(audio) > 48000 and np.abs(audio).max() > 0.05


async def test_a_hundred_thousand_characters_stream_in_bounded_memory(runtime: Runtime) -> None:
    sentence = "Markets were calm and trading was light in the morning session. "
    text = (sentence * (100_000 // len(sentence) + 1))[:100_000]
    stage = PiperTTS()
    seen_audio = 0
    peak = 0
    frames: list[Frame] = [
        TextDelta(text=text[i : i + 500], utterance_id="u") for i in range(0, len(text), 500)
    ]
    frames.append(EndOfUtterance(utterance_id="u"))
    tracemalloc.start()
    try:
        async for out in run_stages(runtime, [stage], frames):
            if isinstance(out, AudioChunk):
                seen_audio += out.num_samples
                if seen_audio > 48000 * 60:
                    break  # a minute in is enough to see that memory stays flat
                peak = max(peak, tracemalloc.get_traced_memory()[0])
                assert stage.buffered_chars("u") <= 400 + 500
    finally:
        tracemalloc.stop()
    assert seen_audio > 48000 * 60
    assert peak < 64 * 2**20, f"{peak / 2**20:.1f} MiB held while streaming"
