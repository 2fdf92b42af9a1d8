"""Word timings from Whisper's cross-attention: the alignment heads, a median filter and DTW.

Whisper's decoder attends to the audio frames it is transcribing; a few
heads ("alignment heads", listed in a CTranslate2 model's ``config.json``)
follow the speech closely. Their scores for each text token, softmaxed over
the frames that hold audio, normalised per frame, median-filtered in time
and averaged, form a token x frame cost; dynamic time warping through it
gives each token's first frame, and a word starts at its first token and
ends where the next word starts. One frame of the encoder is 20 ms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.asr.ct2_whisper import Word

FRAME_S = 0.02
MEDIAN_WIDTH = 7
# Punctuation that belongs to the word before it (closing) or after it (opening), as Whisper writes it.
CLOSING = set(".,!?:;%)]}\"'\u201d\u2019\u3001\u3002\uff0c\uff01\uff1f\uff1a\uff1b")
OPENING = set("([{\"'\u201c\u2018\u00bf\u00a1-")


def alignment_heads(model_dir: Path | None, layers: int, heads: int) -> list[tuple[int, int]]:
    """The (layer, head) pairs of a CTranslate2 model's config; else every head of the upper half."""
    config = model_dir / "config.json" if model_dir is not None else None
    if config is not None and config.is_file():
        listed = json.loads(config.read_text(encoding="utf-8")).get("alignment_heads")
        if listed:
            pairs = [(int(layer), int(head)) for layer, head in listed]
            bad = [p for p in pairs if not (0 <= p[0] < layers and 0 <= p[1] < heads)]
            if bad:
                raise ValueError(f"{config}: alignment heads {bad} outside {layers} layers x {heads} heads")
            return pairs
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]


def dtw(cost: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The cheapest monotonic path from (0, 0) to the last cell: its (row, column) indices."""
    rows, cols = cost.shape
    inf = float("inf")
    total = [[inf] * (cols + 1) for _ in range(rows + 1)]
    total[0][0] = 0.0
    step = [[0] * (cols + 1) for _ in range(rows + 1)]  # 0 diagonal, 1 from above, 2 from the left
    values = cost.tolist()
    for i in range(1, rows + 1):
        above, here, row_cost, row_step = total[i - 1], total[i], values[i - 1], step[i]
        for j in range(1, cols + 1):
            diagonal, up, left = above[j - 1], above[j], here[j - 1]
            if diagonal <= up and diagonal <= left:
                best, move = diagonal, 0
            elif up <= left:
                best, move = up, 1
            else:
                best, move = left, 2
            here[j] = row_cost[j - 1] + best
            row_step[j] = move
    path_rows, path_cols = [], []
    i, j = rows, cols
    while i > 0 and j > 0:
        path_rows.append(i - 1)
        path_cols.append(j - 1)
        move = step[i][j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    return np.asarray(path_rows[::-1], dtype=np.int64), np.asarray(path_cols[::-1], dtype=np.int64)


def _median_filter(x: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Median over ``width`` neighbours along the last axis (reflected at the edges)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def word_timings(
    tokenizer: Any,
    text_tokens: Sequence[int],
    token_probs: Sequence[float],
    scores: npt.NDArray[np.float32],
    audio_frames: int,
) -> tuple[Word, ...]:
    """Words with start/end seconds.

    ``scores``: alignment heads' cross-attention scores ``[heads, len(text_tokens) + 1, 1500]``,
    one row per decoder input from the no-timestamps token on (so the last row predicted the end).
    ``audio_frames``: encoder frames that hold audio (samples / 320).
    """
    if not text_tokens:
        return ()
    frames = max(1, min(audio_frames, scores.shape[-1]))
    w = scores[:, :, :frames].astype(np.float64)
    w = np.exp(w - w.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    mean, std = w.mean(axis=-2, keepdims=True), w.std(axis=-2, keepdims=True)
    w = _median_filter((w - mean) / np.maximum(std, 1e-9), MEDIAN_WIDTH)
    token_rows, time_cols = dtw(-w.mean(axis=0))
    jumps = np.diff(token_rows, prepend=-1).astype(bool)
    starts = time_cols[jumps] * FRAME_S  # the first frame of every row, in order
    words, groups = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    out: list[Word] = []
    at = 0
    for text, group in zip(words[:-1], groups[:-1], strict=True):
        begin, end = at, at + len(group)
        probs = list(token_probs[begin:end])
        out.append(
            Word(
                text=str(text).strip(),
                start_s=round(float(starts[begin]), 3),
                end_s=round(float(starts[min(end, len(starts) - 1)]), 3),
                probability=float(np.mean(probs)) if probs else 0.0,
            )
        )
        at = end
    return _attach_punctuation([w for w in out if w.text])


def _attach_punctuation(words: list[Word]) -> tuple[Word, ...]:
    """Punctuation-only words join their neighbour ("debate" "." -> "debate.")."""
    merged: list[Word] = []
    opening = ""
    for word in words:
        if set(word.text) <= OPENING and (not merged or not set(word.text) <= CLOSING):
            opening += word.text
            continue
        if set(word.text) <= CLOSING and merged:
            last = merged[-1]
            merged[-1] = Word(
                last.text + word.text, last.start_s, max(last.end_s, word.end_s), last.probability
            )
            continue
        merged.append(Word(opening + word.text, word.start_s, word.end_s, word.probability))
        opening = ""
    return tuple(merged)
