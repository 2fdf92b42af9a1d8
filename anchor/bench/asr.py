"""``anchor bench asr``: recognition quality and speed on voices we did not tune on.

The evaluation set is built at run time: Debian's ``espeak-ng`` at several
speeds and pitches, and the default Piper voice, each clean and with white
noise at 20 dB and 10 dB SNR. Reported: WER per condition, RTF per backend, and, streaming the Piper
clips at real-time pace through the recognizer stage, barge-in latency
(speech onset -> SpeechStarted) and end of speech -> final transcript.
Backends: CTranslate2 (faster-whisper, int8) and the engine layer's
torch and onnxruntime (fp32, kv-cache greedy decoding).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.app.offline import join_audio, render_text
from anchor.bench.espeak import espeak
from anchor.core.config import AnchorSettings
from anchor.core.frames import SpeechStarted, Transcript
from anchor.core.realtime import RealTimeClock, paced_chunks
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from anchor.core.stage import StageContext
from anchor.core.stats import summarize
from anchor.listen.recognizer import SpeechRecognizer
from anchor.testing.quality import word_error_rate
from engines.asr.ct2_whisper import CT2Whisper, packaged_tiny_en
from engines.asr.whisper_parts import WhisperGreedy

SENTENCES = [
    "The city council approved the new budget after a long debate.",
    "Heavy snow closed several mountain roads overnight.",
    "The company reported higher profits for the third quarter.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The museum will reopen to visitors next month.",
    "Train services are running normally again this morning.",
    "The minister answered questions from reporters at noon.",
    "Local farmers expect a good harvest this autumn.",
]
ESPEAK_VOICES = [("espeak_s140_p35", 140, 35), ("espeak_s175_p50", 175, 50), ("espeak_s210_p70", 210, 70)]
SNRS = {"clean": None, "snr20": 20.0, "snr10": 10.0}


def add_noise(
    audio: npt.NDArray[np.float32], snr_db: float | None, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    if snr_db is None:
        return audio
    speech_power = float(np.mean(audio[np.abs(audio) > 1e-4] ** 2))
    noise = rng.standard_normal(len(audio)) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.asarray(np.clip(audio + noise, -1, 1), dtype=np.float32)


async def piper_clips(runtime: Runtime) -> list[npt.NDArray[np.float32]]:
    return [join_audio(await render_text(runtime, text)) for text in SENTENCES]


def evaluation_set(
    piper48: list[npt.NDArray[np.float32]], seed: int = 0
) -> dict[str, list[npt.NDArray[np.float32]]]:
    """Condition name -> one 16 kHz clip per sentence."""
    rng = np.random.default_rng(seed)
    voices = {"piper": [resample(c, 48000, 16000) for c in piper48]}
    for name, speed, pitch in ESPEAK_VOICES:
        voices[name] = [espeak(s, speed, pitch) for s in SENTENCES]
    return {
        f"{voice}/{snr}": [add_noise(c, db, rng) for c in clips]
        for voice, clips in voices.items()
        for snr, db in SNRS.items()
    }


async def _stream_latency(runtime: Runtime, clips48: list[npt.NDArray[np.float32]]) -> dict[str, Any]:
    gap = np.zeros(int(48000 * 1.2), np.float32)
    onsets, ends, parts, pos = [], [], [gap], len(gap)
    for clip in clips48:
        onsets.append(pos / 48000)
        pos += len(clip)
        ends.append(pos / 48000)
        parts += [clip, gap]
        pos += len(gap)
    audio = np.concatenate(parts)
    stage = SpeechRecognizer()
    await stage.start(StageContext("bench", runtime.settings, runtime.executor, runtime.engines))
    starts: list[float] = []
    finals: list[float] = []
    clock = RealTimeClock(48000)
    try:
        async for chunk in paced_chunks(audio, 48000, clock=clock):
            async for frame in stage.process(chunk):
                now = clock.elapsed()
                if isinstance(frame, SpeechStarted):
                    starts.append(now)
                elif isinstance(frame, Transcript) and frame.final:
                    finals.append(now)
    finally:
        await stage.stop()
    return {
        "barge_in_ms": summarize([1000 * (s - o) for s, o in zip(starts, onsets, strict=False)]),
        "end_to_final_ms": summarize([1000 * (f - e) for f, e in zip(finals, ends, strict=False)]),
        "utterances": len(clips48),
        "finals": len(finals),
    }


async def bench_asr(settings: AnchorSettings, *, streaming: bool = True) -> dict[str, Any]:
    async with Runtime(settings) as runtime:
        piper48 = await piper_clips(runtime)
        conditions = evaluation_set(piper48)
        engine_settings = settings.engines
        backends = {
            "ctranslate2": CT2Whisper(packaged_tiny_en()).transcribe,
            "torch": WhisperGreedy(engine_settings, "torch").transcribe,
            "onnxruntime": WhisperGreedy(engine_settings, "onnxruntime").transcribe,
        }
        wer: dict[str, dict[str, float]] = {}
        rtf: dict[str, Any] = {}
        for backend, transcribe in backends.items():
            times, seconds = [], []
            wer[backend] = {}
            for condition, clips in conditions.items():
                heard = []
                for clip in clips:
                    began = time.perf_counter()
                    heard.append(transcribe(clip))
                    times.append(time.perf_counter() - began)
                    seconds.append(len(clip) / 16000)
                wer[backend][condition] = round(word_error_rate(SENTENCES, heard), 4)
            rtf[backend] = summarize([t / s for t, s in zip(times, seconds, strict=True)])
        result: dict[str, Any] = {
            "bench": "asr",
            "model": "whisper tiny.en",
            "sentences": len(SENTENCES),
            "wer": wer,
            "rtf": rtf,
        }
        if streaming:
            result["streaming"] = await _stream_latency(runtime, piper48)
        return result
