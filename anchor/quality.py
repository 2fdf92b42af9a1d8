"""Quality measures used by tests and benchmarks: word error rate."""

from __future__ import annotations

import re
from collections.abc import Sequence

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
