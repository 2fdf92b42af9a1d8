"""The ASR benchmark's evaluation set: espeak-ng voices and noise at a stated SNR."""

from __future__ import annotations

import numpy as np
import pytest

from anchor.bench.asr import add_noise
from anchor.bench.espeak import espeak


def test_espeak_voices_are_16k_speech_of_plausible_length() -> None:
    slow, fast = (
        espeak("The museum will reopen next month.", 140, 35),
        espeak("The museum will reopen next month.", 210, 70),
    )
    assert slow.dtype == np.float32 and np.abs(slow).max() > 0.1
    assert 1.0 < len(slow) / 16000 < 4.0
    assert len(fast) < len(slow), "a faster speaking rate gives a shorter clip"


@pytest.mark.parametrize("snr_db", [20.0, 10.0])
def test_noise_is_added_at_the_stated_snr(snr_db: float) -> None:
    rng = np.random.default_rng(1)
    speech = (0.3 * np.sin(np.arange(48000) * 0.05)).astype(np.float32)
    noisy = add_noise(speech, snr_db, rng)
    measured = 10 * np.log10(np.mean(speech**2) / np.mean((noisy - speech) ** 2))
    assert abs(measured - snr_db) < 0.3
    assert add_noise(speech, None, rng) is speech
