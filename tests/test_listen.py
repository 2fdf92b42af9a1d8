"""The streaming recognizer: VAD segmentation, partials, finals, silence, bad input, barge-in."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from anchor.app.offline import join_audio, render_text
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, Frame, SpeechStarted, Transcript
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.realtime import RealTimeClock
from anchor.core.runtime import Runtime
from anchor.core.stage import StageContext
from anchor.listen.audio_in import InputConditioner
from anchor.listen.recognizer import PRE_ROLL_S, SpeechRecognizer, _agreed, _extension
from anchor.listen.vad import RATE, VadSegmenter
from anchor.responders import SayResponder
from anchor.speech.piper_stage import PiperTTS
from anchor.testing.quality import word_error_rate
from tests.helpers import next_event

FIRST = "The central bank raised interest rates by a quarter point on Tuesday."
SECOND = "What is the weather tomorrow?"


@pytest.fixture(scope="module")
def speech() -> dict[str, npt.NDArray[np.float32]]:
    async def render() -> dict[str, npt.NDArray[np.float32]]:
        async with Runtime(AnchorSettings()) as rt:
            out = {}
            for text in (FIRST, SECOND):
                out[text] = join_audio(await render_text(rt, text))
            return out

    return asyncio.run(render())


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    async with Runtime(AnchorSettings()) as rt:
        yield rt


def chunks(audio: npt.NDArray[np.float32], rate: int = 48000, ms: int = 20) -> list[AudioChunk]:
    step = rate * ms // 1000
    return [
        AudioChunk(pcm=np.ascontiguousarray(audio[i : i + step]), sample_rate=rate, pts=i)
        for i in range(0, len(audio), step)
    ]


async def listen(
    runtime: Runtime, audio: list[AudioChunk], *, speed: float | None = None, partial_ms: float = 500.0
) -> list[tuple[float, Frame]]:
    """The recognizer's output for ``audio`` with the wall time of each; ``speed``: release the chunks
    at that multiple of real time (None: as fast as the stage takes them)."""
    stage = SpeechRecognizer(partial_ms=partial_ms)
    await stage.start(StageContext("t", runtime.settings, runtime.executor, runtime.engines))
    out: list[tuple[float, Frame]] = []
    rate = audio[0].sample_rate if audio else 48000
    clock = RealTimeClock(round(rate * (speed or 1.0)))
    try:
        for chunk in audio:
            if speed is not None:
                await clock.until(chunk.pts)
            async for frame in stage.process(chunk):
                out.append((clock.elapsed(), frame))
    finally:
        await stage.stop()
    return out


def vad_starts_ms(audio: npt.NDArray[np.float32]) -> list[float]:
    """Where a fresh VAD, fed the same conditioned audio, confirms each start (ms)."""
    conditioner, vad = InputConditioner(RATE), VadSegmenter()
    events = [e for chunk in chunks(audio) for e in vad.feed(conditioner(chunk))]
    return [1000 * e.sample / RATE for e in events if e.kind == "start"]


def silence(seconds: float) -> npt.NDArray[np.float32]:
    return np.zeros(int(48000 * seconds), dtype=np.float32)


async def test_speech_between_silences_is_segmented_and_transcribed(
    runtime: Runtime, speech: dict[str, np.ndarray]
) -> None:
    a, b = speech[FIRST], speech[SECOND]
    audio = np.concatenate([silence(1.0), a, silence(1.5), b, silence(1.5)])
    frames = [f for _, f in await listen(runtime, chunks(audio))]
    starts = [f for f in frames if isinstance(f, SpeechStarted)]
    finals = [f for f in frames if isinstance(f, Transcript) and f.final]
    assert len(starts) == 2 and len(finals) == 2
    assert [f.utterance_id for f in finals] == [s.utterance_id for s in starts]
    assert word_error_rate([FIRST, SECOND], [f.text for f in finals]) <= 0.2
    detected = vad_starts_ms(audio)
    onsets = [1000.0, 1000 * (1.0 + len(a) / 48000 + 1.5)]
    for final, found, onset in zip(finals, detected, onsets, strict=True):
        assert onset - 100 <= found <= onset + 1000, "the VAD finds speech near its onset"
        assert final.start_ms == pytest.approx(found - 1000 * PRE_ROLL_S, abs=1), (
            "starts at the detected onset minus the pre-roll"
        )
        times = [w.start_ms for w in final.words]
        assert times == sorted(times) and onset - 400 < times[0] < onset + 400


async def test_partials_while_speech_streams_grow_and_never_retract(
    runtime: Runtime, speech: dict[str, np.ndarray]
) -> None:
    audio = np.concatenate([silence(0.5), speech[FIRST], silence(1.0)])
    # Streamed at half real time with a partial every 250 ms of speech: CI runs two test processes on
    # two cores, where a decode may take longer than the speech it covers. What is tested is that
    # partials come while speech streams, grow and never retract; `anchor bench asr` measures the speed.
    events = await listen(runtime, chunks(audio), speed=0.5, partial_ms=250.0)
    partials = [f.text.split() for _, f in events if isinstance(f, Transcript) and not f.final]
    finals = [f for _, f in events if isinstance(f, Transcript) and f.final]
    assert len(partials) >= 2, "partials arrive while the viewer speaks"
    for earlier, later in itertools.pairwise(partials):
        assert len(later) > len(earlier) and [w.lower().strip(".,") for w in later[: len(earlier)]] == [
            w.lower().strip(".,") for w in earlier
        ]
    assert len(finals) == 1
    final_at = next(t for t, f in events if isinstance(f, Transcript) and f.final)
    assert final_at > next(t for t, f in events if isinstance(f, Transcript))


def test_sent_words_stay_when_a_later_hypothesis_splits_them_differently() -> None:
    sent = ["The", "central", "bank-raised", "interest"]
    later = _agreed(
        ["The", "central", "bank", "raised", "interest", "rates", "by"],
        ["the", "central", "bank", "raised", "interest", "rates,"],
    )
    assert _extension(sent, later) == ["rates,"], "words come as the newest hypothesis spells them"
    assert _extension(sent, ["The", "central", "bank"]) == [], "a shorter agreement adds nothing"
    assert _extension(sent, ["The", "central", "banker", "raised"]) is None, "a real change is not appended"
    assert _extension([], ["Hello", "there"]) == ["Hello", "there"]


async def test_no_text_from_silence_or_noise(runtime: Runtime) -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(48000 * 15) * 0.03).astype(np.float32)
    frames = [f for _, f in await listen(runtime, chunks(np.concatenate([silence(15), noise])))]
    assert not [f for f in frames if isinstance(f, Transcript)]


async def test_bad_input_is_normalised_and_memory_stays_flat(
    runtime: Runtime, speech: dict[str, np.ndarray]
) -> None:
    stage = SpeechRecognizer()
    await stage.start(StageContext("t", runtime.settings, runtime.executor, runtime.engines))
    try:
        odd = [
            AudioChunk(pcm=np.zeros(0, np.float32), sample_rate=48000),
            AudioChunk(pcm=np.full((441, 2), 0.1, np.float32), sample_rate=44100),
            AudioChunk(pcm=np.array([np.nan, np.inf, -np.inf, 3.0, -3.0], np.float32), sample_rate=16000),
        ]
        for chunk in odd:
            assert [f async for f in stage.process(chunk)] == []
        assert stage.conditioner.repaired_samples == 3
        for chunk in chunks(silence(120), rate=48000, ms=500):  # two minutes of silence
            assert [f async for f in stage.process(chunk)] == []
        assert stage.buffered_samples <= RATE * (PRE_ROLL_S + 0.15), (
            "idle: the pre-roll and VAD look-back only"
        )
    finally:
        await stage.stop()


async def test_viewer_speech_barges_in_on_the_anchor(
    engine_cache: Path, speech: dict[str, np.ndarray]
) -> None:
    async with Runtime(AnchorSettings(engines={"cache_dir": engine_cache})) as rt:  # type: ignore[arg-type]
        tts = PiperTTS()
        graph = Graph().add(SpeechRecognizer()).chain(SayResponder(), tts).link(tts, AUDIO_OUT)
        session = await rt.open_session(graph)
        events = session.events()
        anchor = await session.say(" ".join([FIRST] * 6))
        await next_event(events, "audio_started", anchor, guard_s=30)
        for chunk in chunks(np.concatenate([speech[SECOND], silence(1.0)])):
            await session.push(chunk)
        finished = await next_event(events, "utterance_finished", anchor, guard_s=30)
        assert finished.detail == "interrupted"
        seen: dict[str, str] = {}
        async with asyncio.timeout(30):
            while not {"silence", "transcript"} <= set(seen):
                event = await events.next()
                assert event is not None
                seen[event.kind] = event.detail
        assert word_error_rate([SECOND], [seen["transcript"]]) <= 0.2, "what the viewer said is an event"


async def test_speech_and_silence_keep_memory_flat(
    runtime: Runtime, speech: dict[str, np.ndarray], request: pytest.FixtureRequest
) -> None:
    """Two minutes by default; the full ten with ``--run-slow`` (75 s on this machine)."""
    import tracemalloc

    pattern = np.concatenate([silence(7.0), speech[SECOND], silence(1.0), speech[FIRST]])
    seconds = 600 if request.config.getoption("--run-slow") else 120
    repeats = int(np.ceil(seconds * 48000 / len(pattern)))
    stage = SpeechRecognizer()
    await stage.start(StageContext("t", runtime.settings, runtime.executor, runtime.engines))
    finals, samples, marks = 0, 0, []
    tracemalloc.start()
    try:
        for _ in range(repeats):
            for chunk in chunks(pattern, ms=500):
                async for frame in stage.process(chunk):
                    finals += isinstance(frame, Transcript) and frame.final
                samples += chunk.num_samples
            marks.append((samples / 48000, tracemalloc.get_traced_memory()[0]))
    finally:
        tracemalloc.stop()
        await stage.stop()
    assert samples / 48000 >= seconds
    assert finals >= 2 * repeats - 2, "every utterance still gets its final"
    first_half = max(m for t, m in marks if seconds / 10 <= t <= seconds / 2)
    second_half = max(m for t, m in marks if t > seconds / 2)
    assert second_half <= first_half + 2 * 2**20, (
        f"memory grew: {first_half / 2**20:.1f} -> {second_half / 2**20:.1f} MiB"
    )
