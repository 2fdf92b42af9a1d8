"""Whatever audio arrives (any rate, channels, NaN, clipping) -> clean 16 kHz mono float32."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from anchor.core.frames import AudioChunk
from anchor.core.resample import StreamingResampler

log = logging.getLogger(__name__)


class InputConditioner:
    """Mixes to mono, repairs non-finite samples, clips, and resamples to ``rate`` as a stream."""

    def __init__(self, rate: int = 16000) -> None:
        self.rate = rate
        self._resampler: StreamingResampler | None = None
        self._from = 0
        self.repaired_samples = 0

    def __call__(self, chunk: AudioChunk) -> npt.NDArray[np.float32]:
        pcm = np.asarray(chunk.pcm, dtype=np.float32)
        if pcm.ndim == 2:
            pcm = pcm.mean(axis=1, dtype=np.float32)
        bad = ~np.isfinite(pcm)
        if bad.any():
            self.repaired_samples += int(bad.sum())
            log.warning("input audio: %d non-finite samples set to 0", int(bad.sum()))
            pcm = np.where(bad, 0.0, pcm).astype(np.float32)
        pcm = np.clip(pcm, -1.0, 1.0)
        if chunk.sample_rate == self.rate:
            return pcm
        if self._resampler is None or self._from != chunk.sample_rate:
            self._resampler, self._from = StreamingResampler(chunk.sample_rate, self.rate), chunk.sample_rate
        return self._resampler.process(pcm)
