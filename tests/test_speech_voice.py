"""The default voice and the HiFi-GAN mel path, end to end, judged by Whisper."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from anchor.app.offline import join_audio, render_text, run_stages
from anchor.core.config import AnchorSettings, VocoderName, VoiceName
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, MelChunk
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from anchor.responders import SayResponder
from anchor.speech.vocoder import ChunkedVocoder, VocoderStage
from anchor.speech.voices import resolve_voice
from anchor.testing.quality import word_error_rate
from engines.asr.ct2_whisper import CT2Whisper
from engines.audio.mel import mel_spectrogram
from engines.voices.piper import JOE_MODEL, PiperVoice, audio_of
from tests.helpers import next_event, recording

NEWS = [
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Shares in London fell 1.2% before recovering in the afternoon.",
    "Firefighters brought the blaze under control after six hours.",
    "The national team won its third match of the season.",
    "Officials expect heavy rain across the north tomorrow morning.",
    "The mayor will open the new bridge on March 3.",
]


def settings(tmp: Path) -> AnchorSettings:
    return AnchorSettings(engines={"cache_dir": tmp, "backends": {"hifigan": "onnxruntime"}})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def whisper() -> CT2Whisper:
    return CT2Whisper()


@pytest.fixture
async def runtime(engine_cache: Path) -> AsyncIterator[Runtime]:
    async with Runtime(settings(engine_cache)) as rt:
        yield rt


def to_16k(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    return resample(audio, rate, 16000)


async def speak(runtime: Runtime, text: str, uid: str = "u") -> list[AudioChunk]:
    return await render_text(runtime, text, utterance_id=uid)


async def test_default_voice_is_intelligible(runtime: Runtime, whisper: CT2Whisper) -> None:
    heard = []
    for i, sentence in enumerate(NEWS):
        chunks = await speak(runtime, sentence, f"u{i}")
        assert all(c.sample_rate == 48000 and c.duration_ms <= 100.5 for c in chunks)
        assert [c.pts for c in chunks] == list(np.cumsum([0] + [c.num_samples for c in chunks[:-1]]))
        heard.append(whisper.transcribe(to_16k(join_audio(chunks), 48000)))
    wer = word_error_rate(NEWS, heard)
    assert wer <= 0.10, f"WER {wer:.3f}: {heard}"


async def test_hifigan_resynthesis_is_intelligible_and_chunking_is_transparent(
    runtime: Runtime, whisper: CT2Whisper
) -> None:
    voice = PiperVoice.for_model(JOE_MODEL.resolve())
    heard = []
    for i, sentence in enumerate(NEWS[:3]):
        wav = np.concatenate(
            [
                audio_of(await runtime.engines.infer("piper-joe", voice.inputs(ids)))
                for ids in voice.phoneme_ids(sentence)
            ]
        )
        mel = mel_spectrogram(wav)
        frames: list[Frame] = [
            MelChunk(
                mel=np.ascontiguousarray(mel[:, j : j + 20]),
                sample_rate=22050,
                hop_length=256,
                utterance_id=str(i),
            )
            for j in range(0, mel.shape[1], 20)
        ]
        frames.append(EndOfUtterance(utterance_id=str(i)))
        out = join_audio(
            [f async for f in run_stages(runtime, [VocoderStage()], frames) if isinstance(f, AudioChunk)]
        )
        heard.append(whisper.transcribe(to_16k(out, 48000)))
    wer = word_error_rate(NEWS[:3], heard)
    assert wer <= 0.10, f"WER {wer:.3f}: {heard}"


async def test_chunked_vocoding_matches_the_whole_utterance(runtime: Runtime) -> None:
    rng = np.random.default_rng(0)
    mel = (rng.standard_normal((80, 230)) - 5).astype(np.float32)

    async def vocode(m: npt.NDArray[np.float32], keep: range = range(0)) -> npt.NDArray[np.float32]:
        return (await runtime.engines.infer("hifigan", {"mel": m[None]}))["audio"].reshape(-1)

    whole = await vocode(mel)
    chunked = ChunkedVocoder(vocode, hop=256)
    blocks = []
    for j in range(0, mel.shape[1], 7):
        blocks += await chunked.push(np.ascontiguousarray(mel[:, j : j + 7]))
    blocks += await chunked.flush()
    assert len(blocks[0]) == 24 * 256, "the first block is short, for early audio"
    out = np.concatenate(blocks)
    assert out.shape == whole.shape
    assert np.abs(out - whole).max() / np.abs(whole).max() < 1e-4
    with pytest.raises(ValueError, match=r"mel chunk must be shaped \(80, frames\), got \(40, 3\)"):
        await chunked.push(np.zeros((40, 3), np.float32))


@pytest.mark.parametrize(
    ("name", "vocoder"), [("piper", "waveglow"), ("mel", "waveglow"), ("mel", "hifigan")]
)
async def test_each_voice_speaks_in_a_paced_session_and_stops_on_interrupt(
    runtime: Runtime, name: VoiceName, vocoder: VocoderName
) -> None:
    voice = await asyncio.to_thread(resolve_voice, AnchorSettings(voice={"name": name, "vocoder": vocoder}))  # type: ignore[arg-type]
    speech = voice.stages()
    graph = Graph().chain(SayResponder(), *speech).link(speech[-1], AUDIO_OUT)
    session = await runtime.open_session(graph)
    events = session.events()
    async with recording(session, audio_ms=60_000) as tape:
        first = await session.say("Good evening. Here is the news.")
        assert (await next_event(events, "utterance_finished", first, guard_s=30)).detail == "done"
        long = await session.say(" ".join(NEWS))
        await next_event(events, "audio_started", long, guard_s=30)
        async with asyncio.timeout(10):  # a fifth of a second of it on the tape, however the voice streams
            while len(join_audio(tape.audio_of(long))) < 0.2 * 48000:  # noqa: ASYNC110 - polls the tape
                await asyncio.sleep(0.02)
        assert await session.interrupt() == {long}
        await next_event(events, "silence")
    spoken = join_audio(tape.audio_of(first))
    assert np.abs(spoken).max() > 0.05 and len(spoken) > 48000, "a second of real speech"
    played = len(join_audio(tape.audio_of(long))) / 48000
    assert 0.1 < played < 2.0, f"the interrupted item played {played:.2f} s, not its whole 20 s"
    pts = [a.pts for a in tape.audio]
    assert pts == list(range(pts[0], pts[0] + 960 * len(pts), 960))
