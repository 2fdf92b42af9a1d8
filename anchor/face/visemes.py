"""Mouth shapes from phoneme timings: each phoneme's viseme, blended with its neighbours.

The voice knows what it says and when (Piper's per-phoneme durations, our
acoustic model's), so the mouth can follow the phonemes exactly instead of
guessing them from the sound. Each phoneme (espeak-ng IPA, as Piper's ids
spell them) has a target shape and a dominance, how strongly it pulls the
mouth towards itself; a frame's shape is the dominance-weighted mean of the
targets near it (Cohen and Massaro's co-articulation model), so an /u/
rounds the consonants around it. Closures (m, b, p) have the highest
dominance and are closed outright for their middle, since a mouth that does
not shut on "m" reads as wrong at once.

These shapes are the teacher of the mouth GAN (``engines.face.mouth_gan``),
which learns to predict them from the sound alone.

The phonemes say which shape; how far the jaw opens also follows vocal
effort: louder syllables are said with a wider jaw. ``Effort`` reads it off
the audio (each frame's level against a slowly falling peak, 30 dB of
range) and ``with_effort`` scales the opening by ``1 - EFFORT + EFFORT *
effort**2``, for the phoneme path and the GAN's alike, at run time (the GAN
learns the phonetic shape only, so no voice's loudness habits are baked
in). On Piper's speech this raises the correlation of the opening with the
audio envelope from 0.58 to about 0.75 (30 sentences; ``EFFORT`` 0.65).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Viseme:
    open: float
    width: float
    round: float
    dominance: float
    #: Seconds over which its pull falls by 1/e outside its own interval.
    reach: float = 0.045


_REST = Viseme(0.0, 0.0, 0.0, 0.8)
_CLOSURE = Viseme(0.0, 0.0, 0.0, 3.0, reach=0.025)  # strong but short: the lips meet, then let go
#: Targets (open, width, round, dominance) by espeak-ng IPA symbol.
VISEMES: dict[str, Viseme] = {
    **dict.fromkeys("pbm", _CLOSURE),
    **dict.fromkeys("fv", Viseme(0.06, 0.1, 0.0, 2.0, reach=0.03)),
    **dict.fromkeys("θð", Viseme(0.16, 0.1, 0.0, 1.2)),
    **dict.fromkeys("tdnlɾ", Viseme(0.2, 0.25, 0.0, 0.7)),
    **dict.fromkeys("sz", Viseme(0.1, 0.35, 0.0, 1.2)),
    **dict.fromkeys("ʃʒ", Viseme(0.18, -0.35, 0.65, 1.4)),
    **dict.fromkeys("kɡŋxç", Viseme(0.3, 0.1, 0.0, 0.5)),
    **dict.fromkeys("hʔ", Viseme(0.35, 0.0, 0.0, 0.3)),
    **dict.fromkeys("ɹr", Viseme(0.2, -0.25, 0.5, 0.9)),
    **dict.fromkeys("wʍ", Viseme(0.1, -0.6, 0.95, 1.8)),
    "j": Viseme(0.2, 0.5, 0.0, 0.8),
    **dict.fromkeys("iy", Viseme(0.28, 0.75, 0.0, 1.0)),
    **dict.fromkeys("ɪᵻɨ", Viseme(0.33, 0.55, 0.0, 0.9)),
    **dict.fromkeys("eɛ", Viseme(0.48, 0.5, 0.0, 1.0)),
    "æ": Viseme(0.72, 0.45, 0.0, 1.0),
    **dict.fromkeys("aɑʌɐ", Viseme(0.85, 0.1, 0.0, 1.0)),
    **dict.fromkeys("ɒɔ", Viseme(0.62, -0.3, 0.6, 1.0)),
    **dict.fromkeys("oø", Viseme(0.45, -0.4, 0.75, 1.1)),
    "ʊ": Viseme(0.3, -0.4, 0.7, 1.0),
    **dict.fromkeys("uʉ", Viseme(0.25, -0.5, 0.9, 1.2)),
    **dict.fromkeys("əɚɜ", Viseme(0.42, 0.1, 0.1, 0.7)),
    **dict.fromkeys(".,;:!?-", Viseme(0.0, 0.0, 0.0, 1.2)),
    **dict.fromkeys("^$", _REST),
}
#: Symbols with no shape of their own (pads, word gaps, stress and length marks): time for the neighbours.
TRANSPARENT = frozenset("_ ˈˌːˑ'\"")


#: How much of the opening follows vocal effort rather than the phoneme alone.
EFFORT = 0.65
_RANGE_DB = 30.0


class Effort:
    """Vocal effort frame by frame: 0 (silence, or 30 dB below the recent peak) to 1 (at the peak).

    Causal: the peak falls by 0.4 dB a frame and never below -30 dBFS, so a
    stream and a whole file agree, and a quiet voice still moves the mouth.
    """

    def __init__(self) -> None:
        self.peak = -20.0

    def next(self, audio: npt.NDArray[np.float32]) -> float:
        """The effort of the next frame, from its audio."""
        level = (
            10 * float(np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-12))
            if len(audio)
            else -120.0
        )
        self.peak = max(level, self.peak - 0.4, -30.0)
        return float(np.clip((level - (self.peak - _RANGE_DB)) / _RANGE_DB, 0.0, 1.0))


@dataclass(frozen=True)
class Timed:
    """A phoneme and its interval in seconds from the utterance's start."""

    symbol: str
    start: float
    end: float


def timed_phonemes(symbols: Sequence[str], durations: Sequence[float]) -> list[Timed]:
    """Phonemes laid end to end from their durations (seconds), transparent ones dropped."""
    out, t = [], 0.0
    for symbol, d in zip(symbols, durations, strict=True):
        if symbol not in TRANSPARENT:
            out.append(Timed(symbol, t, t + float(d)))
        t += float(d)
    return out


def with_effort(shapes: npt.NDArray[np.float32], efforts: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``shapes`` (``[N, 3]``) with their opening scaled by each frame's vocal effort."""
    level = np.asarray(efforts, dtype=np.float32).reshape(-1)
    out = np.array(shapes, dtype=np.float32)
    out[:, 0] *= 1 - EFFORT + EFFORT * level**2
    return out


def mouth_track(phonemes: Sequence[Timed], times: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """``[len(times), 3]`` (open, width, round) at each time (seconds), co-articulated.

    A symbol without a viseme (an unknown letter) counts as a neutral,
    weakly dominant vowel: the mouth keeps moving rather than freezing.
    """
    t = np.asarray(times, dtype=np.float64).reshape(-1)
    if not phonemes:
        return np.zeros((len(t), 3), dtype=np.float32)
    neutral = Viseme(0.3, 0.0, 0.0, 0.3)
    vis = [VISEMES.get(p.symbol, neutral) for p in phonemes]
    targets = np.array([[v.open, v.width, v.round] for v in vis])  # [P, 3]
    dominance = np.array([v.dominance for v in vis])
    reach = np.array([v.reach for v in vis])
    starts = np.array([p.start for p in phonemes])
    ends = np.array([p.end for p in phonemes])
    outside = np.maximum(np.maximum(starts[None] - t[:, None], t[:, None] - ends[None]), 0.0)  # [T, P]
    pull = dominance[None] * np.exp(-outside / reach[None])
    shapes = pull @ targets / np.maximum(pull.sum(axis=1, keepdims=True), 1e-9)
    # Closures shut for their middle: the lips must meet on m, b and p however short they are.
    for p, v in zip(phonemes, vis, strict=True):
        if v is _CLOSURE:
            # At least half a 25 fps frame either side, so the frame nearest every closure shows it shut.
            mid, half = (p.start + p.end) / 2, max(0.3 * (p.end - p.start), 0.021)
            shapes[np.abs(t - mid) <= half, 0] = 0.0
    return np.asarray(shapes, dtype=np.float32)
