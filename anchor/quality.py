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
