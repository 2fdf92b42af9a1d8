"""Retry delays: exponential backoff with full jitter.

Each delay is drawn uniformly from ``[0, min(cap, base * 2**failures))``, so
clients that failed together (a broker restart drops every anchor at once)
spread their retries instead of arriving in waves.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base_s: float, cap_s: float, *, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {base_s} and {cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The longest the next delay may be."""
        return float(min(self.cap_s, self.base_s * 2 ** min(self.failures, 64)))

    def next_delay(self) -> float:
        """The delay before the next try; each call counts one more failure."""
        delay = self._rng.uniform(0, self.ceiling())
        self.failures += 1
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts from ``base_s`` again."""
        self.failures = 0
