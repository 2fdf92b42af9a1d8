"""Log-mel spectrograms exactly as Tacotron 2, WaveGlow and HiFi-GAN compute them.

22050 Hz, n_fft 1024, hop 256, Hann window 1024, 80 Slaney mel bands from
0 to 8000 Hz (librosa's default basis; ``scale="htk"`` gives HTK's mel scale
with the same area normalisation, as ``librosa.filters.mel(htk=True)`` does,
for models trained on it), STFT magnitude (not power), natural
log of the magnitude clamped at 1e-5. The two framings differ: Tacotron 2 /
WaveGlow centre frames (reflect-pad n_fft/2, ``1 + T//hop`` frames); HiFi-GAN
reflect-pads (n_fft - hop)/2 and does not centre (``T//hop`` frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

Framing = Literal["tacotron", "hifigan"]
MelScale = Literal["slaney", "htk"]


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    clip: float = 1e-5
    scale: MelScale = "slaney"


def _hz_to_mel(hz: npt.NDArray[np.float64], scale: MelScale) -> npt.NDArray[np.float64]:
    """Slaney's scale: linear below 1 kHz, logarithmic above; HTK's: 2595 log10(1 + hz / 700)."""
    if scale == "htk":
        return np.asarray(2595.0 * np.log10(1.0 + hz / 700.0), dtype=np.float64)
    mel = hz * 3 / 200
    log_part = hz >= 1000
    mel[log_part] = 15 + np.log(hz[log_part] / 1000) * 27 / np.log(6.4)
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64], scale: MelScale) -> npt.NDArray[np.float64]:
    if scale == "htk":
        return np.asarray(700.0 * (10.0 ** (mel / 2595.0) - 1.0), dtype=np.float64)
    hz = mel * 200 / 3
    log_part = mel >= 15
    hz[log_part] = 1000 * np.exp((mel[log_part] - 15) * np.log(6.4) / 27)
    return hz


@lru_cache(maxsize=8)
def mel_basis(config: MelConfig) -> npt.NDArray[np.float32]:
    """``[n_mels, n_fft//2 + 1]`` triangular filters, Slaney-normalised (librosa ``norm='slaney'``)."""
    fft_hz = np.linspace(0, config.sample_rate / 2, config.n_fft // 2 + 1)
    low, high = _hz_to_mel(np.array([config.fmin, config.fmax], dtype=np.float64), config.scale)
    edges = _mel_to_hz(np.linspace(float(low), float(high), config.n_mels + 2), config.scale)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(
    audio: npt.NDArray[np.floating], config: MelConfig = MelConfig(), framing: Framing = "hifigan"
) -> npt.NDArray[np.float32]:
    """Log-mel ``[n_mels, frames]`` of mono ``audio`` in [-1, 1] at ``config.sample_rate``."""
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).reshape(1, 1, -1)
    pad = config.n_fft // 2 if framing == "tacotron" else (config.n_fft - config.hop_length) // 2
    if x.shape[-1] <= pad:
        raise ValueError(f"audio of {x.shape[-1]} samples is too short for a mel frame (needs > {pad})")
    x = torch.nn.functional.pad(x, (pad, pad), mode="reflect").reshape(-1)
    spec = torch.stft(
        x,
        config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=torch.hann_window(config.win_length),
        center=False,
        return_complex=True,
    )
    magnitude = spec.abs().numpy()
    mel = mel_basis(config) @ magnitude
    return np.asarray(np.log(np.maximum(mel, config.clip)), dtype=np.float32)
