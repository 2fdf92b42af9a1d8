"""``anchor bench tts``: time to first audio and real-time factor of each voice.

``piper`` is Piper itself (the default voice); ``mel+hifigan`` and
``mel+waveglow`` are our acoustic model with HiFi-GAN and, when WaveGlow
weights are configured or shipped, with WaveGlow. The streaming rows vocode
Piper's own mels, so they time the vocoder alone.

TTFA is text in -> the first audio chunk out of the TTS stage (>= 20 ms of
48 kHz audio), measured on the stage itself so it excludes pacing. RTF is
the whole item's synthesis time over its audio duration.

Each voice row also carries how it sounds (``listening``): the listening
gate's DistillMOS, Whisper base WER and pitch against the teacher on the
held-out news (``anchor.train.gates``; the judges are dev dependencies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from anchor.app.offline import run_stages
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, MelChunk, TextDelta
from anchor.core.runtime import Runtime
from anchor.core.stage import Stage
from anchor.core.stats import summarize
from anchor.speech.normalize import normalize
from anchor.speech.vocoder import VocoderStage, waveglow_declared, waveglow_stage
from anchor.speech.voices import Voice
from engines.audio.mel import mel_spectrogram
from engines.engine import Engine
from engines.voices.piper import JOE_MODEL, PiperVoice, audio_of
from engines.weights import project_weights_dir

WAVEGLOW_WEIGHTS = project_weights_dir() / "waveglow.pt"

ITEMS = {
    "one_sentence": "The central bank raised interest rates by a quarter point on Tuesday, citing inflation.",
    "five_sentences": (
        "Good evening, here are the headlines. The central bank raised interest rates by 0.25% on "
        "Tuesday. Markets in London fell 1.2% before recovering in the afternoon. In sport, the "
        "national team won its third match of the season 2-1. And finally, the weather: expect rain "
        "across the north, with temperatures around 12 degrees."
    ),
}


async def _vocoder_streaming(runtime: Runtime, stage: Callable[[], Stage], *, rounds: int) -> dict[str, Any]:
    """RTF and first-audio time of a streamed vocoder over Piper's mels."""
    voice = PiperVoice.for_model(JOE_MODEL.resolve())
    text = ITEMS["five_sentences"]
    wav = np.concatenate(
        [
            audio_of(await runtime.engines.infer("piper-joe", voice.inputs(ids)))
            for ids in voice.phoneme_ids(normalize(text))
        ]
    )
    mel = mel_spectrogram(wav)
    seconds = len(wav) / 22050
    rtf, first_ms = [], []
    for i in range(rounds + 1):
        frames: list[Frame] = [
            MelChunk(
                mel=np.ascontiguousarray(mel[:, j : j + 10]),
                sample_rate=22050,
                hop_length=256,
                utterance_id=f"h{i}",
            )
            for j in range(0, mel.shape[1], 10)
        ]
        frames.append(EndOfUtterance(utterance_id=f"h{i}"))
        began = time.perf_counter()
        first = None
        async for out in run_stages(runtime, [stage()], frames):
            if isinstance(out, AudioChunk) and first is None:
                first = time.perf_counter()
        if i and first is not None:  # round 0 warms the engine up
            rtf.append((time.perf_counter() - began) / seconds)
            first_ms.append((first - began) * 1000)
    return {"audio_seconds": round(seconds, 2), "rtf": summarize(rtf), "first_audio_ms": summarize(first_ms)}


async def _stages_ttfa_rtf(
    runtime: Runtime, stages: Callable[[], list[Stage]], *, rounds: int, warmup: int
) -> dict[str, Any]:
    """Per item: text in -> first audio chunk out (TTFA) and synthesis time over audio time (RTF)."""
    rate = runtime.settings.media.sample_rate
    results: dict[str, Any] = {}
    for item, text in ITEMS.items():
        ttfa, rtf = [], []
        for i in range(warmup + rounds):
            uid = f"bench/{item}/{i}"
            frames = [TextDelta(text=text, utterance_id=uid), EndOfUtterance(utterance_id=uid)]
            began = time.perf_counter()
            first = None
            samples = 0
            async for out in run_stages(runtime, stages(), frames):
                if isinstance(out, AudioChunk):
                    first = first or time.perf_counter()
                    samples += out.num_samples
            total = time.perf_counter() - began
            if i >= warmup and first is not None:
                ttfa.append((first - began) * 1000)
                rtf.append(total / (samples / rate))
        results[item] = {"ttfa_ms": summarize(ttfa), "rtf": summarize(rtf)}
    return results


async def bench_tts(
    settings: AnchorSettings, *, rounds: int = 10, warmup: int = 2, listen: bool = True
) -> dict[str, Any]:
    """Every voice (``piper``, ``mel+hifigan``, ``mel+waveglow`` when WaveGlow weights exist) the same way;
    ``listen``: also judge how each sounds (about two minutes on two cores)."""
    waveglow = "waveglow" in settings.engines.weights or WAVEGLOW_WEIGHTS.exists()
    # How the WaveGlow weights are sampled (sigma, source), read once and off the loop (a torch.load).
    declared = await asyncio.to_thread(waveglow_declared, settings) if waveglow else None
    voices = [Voice("piper"), Voice("mel", "hifigan")]
    if declared is not None:
        voices.append(Voice("mel", "waveglow", declared.sigma, source=declared.source))
    results: dict[str, Any] = {}
    async with Runtime(settings) as runtime:
        for voice in voices:
            results[voice.label] = await _stages_ttfa_rtf(runtime, voice.stages, rounds=rounds, warmup=warmup)
        results["hifigan_streaming"] = await _vocoder_streaming(
            runtime, VocoderStage, rounds=max(2, rounds // 3)
        )
        if declared is not None:
            results["waveglow_streaming"] = await _vocoder_streaming(
                runtime,
                lambda: waveglow_stage(declared.sigma, source=declared.source),
                rounds=max(2, rounds // 3),
            )
        if listen:
            from anchor.train.gates import listening_gate

            scores = await asyncio.to_thread(listening_gate, [v.label for v in voices])
            for label, score in scores.items():
                results[label]["listening"] = score.summary(scores["piper"])
        results["backends"] = {
            name: f"{type(engine.backend).__name__} ({engine.backend.device}, {engine.backend.precision})"
            for name, engine in runtime.engines.loaded().items()
            if isinstance(engine, Engine)
        }
    return {
        "bench": "tts",
        "default_voice": Voice(settings.voice.name, settings.voice.vocoder).label,
        "output_rate": settings.media.sample_rate,
        "rounds": rounds,
        "warmup": warmup,
        **results,
    }
