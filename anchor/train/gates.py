"""The quality gate of our speech weights: word error rate of held-out news through the project's Whisper.

Our acoustic model speaks the 16 ``HELD_OUT`` sentences (never in the
training corpus), a vocoder turns its mels into audio, and Whisper tiny.en
(CTranslate2, the recognizer of the live anchor) writes down what it heard.
The gate is WER <= 15 % (``GATE``) for each vocoder path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anchor.config import VocoderName
from anchor.quality import word_error_rate
from anchor.speech.normalize import normalize
from anchor.speech.resample import resample
from anchor.train.corpus import HELD_OUT

GATE = 0.15


@dataclass(frozen=True)
class GateResult:
    vocoder: VocoderName
    wer: float
    heard: tuple[str, ...]
    sigma: float | None

    @property
    def passed(self) -> bool:
        return self.wer <= GATE


def speech_gate(
    vocoder: VocoderName, *, acoustic: Path | None = None, waveglow: Path | None = None
) -> GateResult:
    """WER of ``acoustic`` (default: shipped) + ``vocoder`` on the held-out news; WaveGlow (default:
    shipped) samples at the noise scale its checkpoint declares, from a fixed seed."""
    from engines.asr.ct2_whisper import CT2Whisper
    from engines.registry import hifigan_spec, load_hifigan
    from engines.vocoders.waveglow import declared_sigma, load_waveglow
    from engines.voices.acoustic import ACOUSTIC_WEIGHTS, load_acoustic, mel_of
    from engines.voices.piper import JOE_MODEL, PiperVoice
    from engines.weights import WeightsSource

    model = load_acoustic(acoustic or ACOUSTIC_WEIGHTS.resolve())
    voice = PiperVoice.for_model(JOE_MODEL.resolve())
    sigma: float | None = None
    if vocoder == "waveglow":
        path = waveglow or WeightsSource.project("waveglow.pt").resolve()
        flow, sigma = load_waveglow(path), declared_sigma(path)
    else:
        generator = load_hifigan(hifigan_spec().weights.resolve()).eval()
    asr = CT2Whisper()
    heard = []
    for text in HELD_OUT:
        with torch.inference_mode():
            mel = mel_of(model, voice.phoneme_ids(normalize(text))[0])[None]
            if sigma is not None:
                audio = flow.infer(mel, sigma=sigma, generator=torch.Generator().manual_seed(0))
            else:
                audio = generator(mel)
        wave = np.clip(audio.reshape(-1).numpy(), -1.0, 1.0)
        heard.append(asr.recognize(resample(wave, 22050, 16000)).text)
    return GateResult(vocoder, word_error_rate(list(HELD_OUT), heard), tuple(heard), sigma)
