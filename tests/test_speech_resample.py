from __future__ import annotations

import numpy as np
import pytest

from anchor.core.resample import StreamingResampler


def tones(rate: int, seconds: float, freqs: tuple[float, ...]) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return sum(0.3 * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


@pytest.mark.parametrize(("src", "dst"), [(22050, 48000), (16000, 48000), (48000, 16000), (24000, 48000)])
def test_matches_the_analytic_signal_and_keeps_length(src: int, dst: int) -> None:
    freqs = (440.0, 3000.0)
    x = tones(src, 0.5, freqs)
    r = StreamingResampler(src, dst)
    y = np.concatenate([r.process(x), r.flush()])
    assert len(y) == -(-len(x) * dst // src)
    expected = tones(dst, len(y) / dst, freqs)[: len(y)]
    edge = dst // 100
    assert np.abs(y[edge:-edge] - expected[edge:-edge]).max() < 2e-3


def test_chunked_equals_one_shot_exactly() -> None:
    x = np.random.default_rng(3).standard_normal(30000).astype(np.float32) * 0.1
    whole = StreamingResampler(22050, 48000)
    reference = np.concatenate([whole.process(x), whole.flush()])
    pieces = StreamingResampler(22050, 48000)
    out, i = [], 0
    for n in [1, 2, 5, 100, 3, 7000, 1, 9999] * 10:
        out.append(pieces.process(x[i : i + n]))
        i += n
    out.append(pieces.process(x[i:]))
    out.append(pieces.flush())
    np.testing.assert_array_equal(np.concatenate(out), reference)


def test_stops_frequencies_above_the_new_nyquist() -> None:
    alias = tones(48000, 0.5, (12000.0,))  # above 8 kHz, the Nyquist of 16 kHz
    r = StreamingResampler(48000, 16000)
    y = np.concatenate([r.process(alias), r.flush()])
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError, match="sample rates must be positive, got 0 and 48000"):
        StreamingResampler(0, 48000)
