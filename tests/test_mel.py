"""Our mel front-end against librosa's (a dev dependency), for the Slaney and the HTK mel scales."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from engines.audio.mel import MelConfig, mel_basis, mel_spectrogram

CONFIGS = {
    "tacotron-waveglow-hifigan": MelConfig(),
    "wav2lip": MelConfig(sample_rate=16000, n_fft=800, hop_length=200, win_length=800, fmin=55, fmax=7600),
    "whisper-like": MelConfig(sample_rate=16000, n_fft=400, hop_length=160, win_length=400, fmax=8000),
    "htk": MelConfig(scale="htk"),
    "htk-wide": MelConfig(sample_rate=24000, n_fft=2048, n_mels=128, fmin=20, fmax=12000, scale="htk"),
}


def _librosa_basis(config: MelConfig) -> np.ndarray:
    return librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        htk=config.scale == "htk",
        norm="slaney",
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_filterbank_matches_librosa(name: str) -> None:
    config = CONFIGS[name]
    ours, theirs = mel_basis(config), _librosa_basis(config)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6 * theirs.max())


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_log_mel_matches_librosa_for_the_centred_framing(scale: str) -> None:
    config = MelConfig(scale=scale)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    t = np.arange(config.sample_rate) / config.sample_rate
    audio = (0.4 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)).astype(
        np.float32
    )
    ours = mel_spectrogram(audio, config, framing="tacotron")
    magnitude = np.abs(
        librosa.stft(
            audio,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            window="hann",
            center=True,
            pad_mode="reflect",
        )
    )
    theirs = np.log(np.maximum(_librosa_basis(config) @ magnitude, config.clip))
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3)


def test_mel_front_end_follows_the_slaney_scale() -> None:
    config = MelConfig()
    basis = mel_basis(config)
    assert basis.shape == (80, 513)
    hz_per_bin = config.sample_rate / config.n_fft
    # Slaney normalisation: every triangle has the same area (2 / bandwidth * bandwidth / 2 = 1 in Hz).
    np.testing.assert_allclose(basis.sum(axis=1) * hz_per_bin, 1.0, rtol=0.08)
    assert basis[:, 372:].max() == 0, "nothing above fmax (8 kHz, bin 372)"
    tone = np.sin(2 * np.pi * 1000 * np.arange(22050) / 22050).astype(np.float32)
    taco, hifi = mel_spectrogram(tone, framing="tacotron"), mel_spectrogram(tone, framing="hifigan")
    assert taco.shape == (80, 1 + 22050 // 256) and hifi.shape == (80, 22050 // 256)
    # Slaney: 1 kHz is mel 15, 8 kHz is 15 + 27 ln 8 / ln 6.4 = 45.25; 82 edges step 0.552 mel,
    # so 1 kHz sits at the centre of band 15 / 0.552 - 1 = 26.2.
    peak_band = int(np.argmax(hifi[:, 40]))
    assert abs(peak_band - 26) <= 1
    assert hifi.min() >= np.log(1e-5) - 1e-6
    with pytest.raises(ValueError, match="too short for a mel frame"):
        mel_spectrogram(np.zeros(100, np.float32))
