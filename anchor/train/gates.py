"""The listening gate: each voice path on held-out news, judged as a listener would hear it.

Every path speaks the ``HELD_OUT`` news sentences (never in the training
corpus) at 22050 Hz, and judges the project did not write score it
(``anchor/bench/listeners.py``): DistillMOS (mean and min), the word error
rate of Whisper base, and pitch against the teacher (Piper with zero noise,
what our acoustic model learned from): the correlation of log F0 on
time-aligned voiced frames, and the gross pitch error rate.

The paths: ``piper`` (the product's Piper voice), ``mel+hifigan`` and
``mel+waveglow`` (our acoustic model and a vocoder), and, to split the blame
between acoustic model and vocoder, ``teacher-mel+hifigan`` and
``teacher-mel+waveglow`` (the teacher's own mels through each vocoder).

One of our paths may be the default voice only if it is within
``MOS_MARGIN`` of Piper's DistillMOS, its pitch correlation with the teacher
is at least ``PITCH_CORRELATION``, and its WER is at most ``WER_GATE``;
Piper is the reference and the default until one does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from anchor.speech.normalize import normalize
from anchor.testing.quality import word_error_rate
from anchor.train.corpus import HELD_OUT

MOS_MARGIN = 0.3
PITCH_CORRELATION = 0.8
WER_GATE = 0.05
RATE = 22050

VOICE_PATHS = ("piper", "mel+hifigan", "mel+waveglow")
DIAGNOSTIC_PATHS = ("teacher-mel+hifigan", "teacher-mel+waveglow")


@dataclass(frozen=True)
class Sentence:
    text: str
    heard: str
    mos: float
    pitch_correlation: float
    gross_pitch_error: float
    voiced_frames: int
    f0_std_hz: float


@dataclass(frozen=True)
class PathScore:
    path: str
    sentences: tuple[Sentence, ...]
    sigma: float | None = None

    @property
    def mos_mean(self) -> float:
        return float(np.mean([s.mos for s in self.sentences]))

    @property
    def mos_min(self) -> float:
        return float(np.min([s.mos for s in self.sentences]))

    @property
    def wer(self) -> float:
        return word_error_rate([s.text for s in self.sentences], [s.heard for s in self.sentences])

    @property
    def pitch_correlation(self) -> float:
        """Mean over sentences of the per-sentence log-F0 correlation (the contour, not the register)."""
        return float(np.mean([s.pitch_correlation for s in self.sentences]))

    @property
    def gross_pitch_error(self) -> float:
        """Over all aligned voiced frames of all sentences."""
        frames = np.asarray([s.voiced_frames for s in self.sentences], dtype=np.float64)
        errors = np.asarray([s.gross_pitch_error for s in self.sentences])
        return float((frames * errors).sum() / max(frames.sum(), 1.0))

    @property
    def f0_std_hz(self) -> float:
        return float(np.mean([s.f0_std_hz for s in self.sentences]))

    def default_worthy(self, piper: PathScore) -> bool:
        """May this path be the default voice, measured against Piper on the same sentences?
        Piper is the reference, so it always may (its own pitch is sampled: it is not held to
        the noiseless teacher's contour that our models learned)."""
        return self.path == "piper" or (
            self.mos_mean >= piper.mos_mean - MOS_MARGIN
            and self.pitch_correlation >= PITCH_CORRELATION
            and self.wer <= WER_GATE
        )

    def summary(self, piper: PathScore | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "distillmos_mean": round(self.mos_mean, 3),
            "distillmos_min": round(self.mos_min, 3),
            "wer": round(self.wer, 4),
            "pitch_correlation": round(self.pitch_correlation, 3),
            "gross_pitch_error": round(self.gross_pitch_error, 3),
            "f0_std_hz": round(self.f0_std_hz, 2),
            "sentences": len(self.sentences),
        }
        if self.sigma is not None:
            out["sigma"] = self.sigma
        if piper is not None:
            out["default_worthy"] = self.default_worthy(piper)
        return out


Speaker = Callable[[str], npt.NDArray[np.float32]]


class VoicePaths:
    """Each voice path (and the teacher) as text -> 22050 Hz audio, models loaded once (blocking)."""

    def __init__(self, acoustic: Path | None, waveglow: Path | None) -> None:
        from anchor.train.speech_data import TEACHER_SCALES, teacher_session
        from engines.voices.acoustic_parts import ACOUSTIC_WEIGHTS
        from engines.voices.piper import JOE_MODEL, PiperVoice
        from engines.weights import WeightsSource

        model = JOE_MODEL.resolve()
        self.voice = PiperVoice.for_model(model)
        self.piper = teacher_session(model, threads=2)
        c = self.voice.config
        self.product_scales = np.asarray([c.noise_scale, c.length_scale, c.noise_w], dtype=np.float32)
        self.teacher_scales = np.asarray(TEACHER_SCALES, dtype=np.float32)
        self._acoustic_path = acoustic or ACOUSTIC_WEIGHTS.resolve()
        self._waveglow_path = waveglow or WeightsSource.project("waveglow.pt").resolve()
        self._acoustic: Any = None
        self._hifigan: Any = None
        self._waveglow: Any = None
        self.sigma: float | None = None

    def _ids(self, text: str) -> list[list[int]]:
        return self.voice.phoneme_ids(normalize(text))

    def _piper(self, ids: list[int], scales: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        inputs = {**self.voice.inputs(ids), "scales": scales}
        audio = self.piper.run(["output"], inputs)[0]  # type: ignore[attr-defined]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def piper_audio(self, text: str) -> npt.NDArray[np.float32]:
        return np.concatenate([self._piper(ids, self.product_scales) for ids in self._ids(text)])

    def teacher_audio(self, text: str) -> npt.NDArray[np.float32]:
        return np.concatenate([self._piper(ids, self.teacher_scales) for ids in self._ids(text)])

    def _vocode(self, vocoder: str, mel: torch.Tensor) -> npt.NDArray[np.float32]:
        from engines.registry import hifigan_spec, load_hifigan
        from engines.vocoders.waveglow_checkpoints import declared_sigma, load_waveglow

        with torch.inference_mode():
            if vocoder == "waveglow":
                if self._waveglow is None:
                    self._waveglow = load_waveglow(self._waveglow_path)
                    self.sigma = declared_sigma(self._waveglow_path)
                seed = torch.Generator().manual_seed(0)
                audio = self._waveglow.infer(mel[None], sigma=self.sigma, generator=seed)
            else:
                if self._hifigan is None:
                    self._hifigan = load_hifigan(hifigan_spec().weights.resolve()).eval()
                audio = self._hifigan(mel[None])
        return np.asarray(audio.reshape(-1).numpy(), dtype=np.float32)

    def mel_audio(self, text: str, vocoder: str) -> npt.NDArray[np.float32]:
        from engines.voices.acoustic_parts import load_acoustic, mel_of

        if self._acoustic is None:
            self._acoustic = load_acoustic(self._acoustic_path)
        return np.concatenate([self._vocode(vocoder, mel_of(self._acoustic, ids)) for ids in self._ids(text)])

    def teacher_mel_audio(self, text: str, vocoder: str) -> npt.NDArray[np.float32]:
        from engines.audio.mel import mel_spectrogram

        mel = torch.from_numpy(mel_spectrogram(self.teacher_audio(text)))
        return self._vocode(vocoder, mel)

    def speaker(self, path: str) -> Speaker:
        if path == "piper":
            return self.piper_audio
        kind, vocoder = path.split("+")
        if kind == "mel":
            return lambda text: self.mel_audio(text, vocoder)
        return lambda text: self.teacher_mel_audio(text, vocoder)


def listening_gate(
    paths: Sequence[str] = VOICE_PATHS + DIAGNOSTIC_PATHS,
    *,
    sentences: Sequence[str] = HELD_OUT,
    acoustic: Path | None = None,
    waveglow: Path | None = None,
) -> dict[str, PathScore]:
    """Score each path on ``sentences``. Blocking: loads the judges and the models, ~1 s a sentence
    a path on two cores. ``acoustic`` / ``waveglow``: weights to judge instead of the shipped ones."""
    from anchor.bench.listeners import judges, pitch_agreement, to_judge_rate

    unknown = [p for p in paths if p not in VOICE_PATHS + DIAGNOSTIC_PATHS]
    if unknown:
        raise ValueError(f"unknown voice paths {unknown}; known: {list(VOICE_PATHS + DIAGNOSTIC_PATHS)}")

    mos, asr = judges()
    voices = VoicePaths(acoustic, waveglow)
    teachers = [to_judge_rate(voices.teacher_audio(text), RATE) for text in sentences]
    scores: dict[str, PathScore] = {}
    for path in paths:
        speak = voices.speaker(path)
        rows = []
        for text, teacher in zip(sentences, teachers, strict=True):
            audio = to_judge_rate(speak(text), RATE)
            pitch = pitch_agreement(audio, teacher)
            rows.append(
                Sentence(
                    text=text,
                    heard=asr.transcribe(audio),
                    mos=mos.score(audio),
                    pitch_correlation=pitch.correlation,
                    gross_pitch_error=pitch.gross_error,
                    voiced_frames=pitch.voiced_frames,
                    f0_std_hz=pitch.f0_std_hz,
                )
            )
        sigma = voices.sigma if path.endswith("waveglow") else None
        scores[path] = PathScore(path, tuple(rows), sigma)
    return scores
