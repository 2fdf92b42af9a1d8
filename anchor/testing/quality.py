"""Quality measures used by tests and benchmarks: word error rate, lip-sync lag."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from anchor.speech.normalize import normalize


def wer_words(text: str) -> list[str]:
    """Words compared for WER: normalised (numbers spelled), lower case, no punctuation."""
    spoken = normalize(text).lower().replace("-", " ")
    return re.sub(r"[^a-z' ]+", " ", spoken).split()


def _edits(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Total word edits over total reference words, across all pairs."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    pairs = [(wer_words(r), wer_words(h)) for r, h in zip(references, hypotheses, strict=True)]
    words = sum(len(r) for r, _ in pairs)
    if words == 0:
        raise ValueError("the references hold no words")
    return sum(_edits(r, h) for r, h in pairs) / words


def best_lag(
    opening: npt.NDArray[np.float64], envelope: npt.NDArray[np.float64], reach: int = 4
) -> tuple[int, float]:
    scores = {}
    for lag in range(-reach, reach + 1):
        a = opening[max(0, lag) : len(opening) + min(0, lag)]
        b = envelope[max(0, -lag) : len(envelope) + min(0, -lag)]
        scores[lag] = float(np.corrcoef(a, b)[0, 1])
    lag = max(scores, key=lambda k: scores[k])
    return lag, scores[lag]


def envelope(audio: npt.NDArray[np.float32], rate: int, fps: int, frames: int) -> npt.NDArray[np.float64]:
    """RMS of each video frame's audio (mono)."""
    step = rate // fps
    return np.array([np.sqrt(np.mean(audio[i * step : (i + 1) * step] ** 2) + 1e-12) for i in range(frames)])


def ssim(a: npt.NDArray[np.uint8], b: npt.NDArray[np.uint8]) -> float:
    """Mean structural similarity of two RGB images' luma (Gaussian window, sigma 1.5; Wang et al.)."""
    import cv2

    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(cv2.GaussianBlur(z, (11, 11), 1.5), dtype=np.float64)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def sharpness(image: npt.NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of an RGB image's luma: how much fine detail it holds."""
    import cv2

    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())
