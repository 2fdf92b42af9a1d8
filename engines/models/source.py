"""A source for a flow vocoder: the speaker's pitch read off the mel, turned into an excitation.

Why: a WaveGlow sampled at sigma 0 (z = 0) is a time-invariant network fed a
conditioning signal that the upsampler repeats every hop (256 samples), so
all it can make is harmonics of 22050 / 256 = 86.1 Hz: a monotone buzz. Fed
instead an excitation that carries the pitch (a band-limited pulse train at
F0 where the speech is voiced, noise where it is not), the flows only have
to shape its spectrum: a source-filter flow.

- ``PitchHead``: log-mel ``[B, 80, T]`` -> ``[B, 2, T]``: log F0 relative to
  ``F0_REF`` and a voicing logit, per mel frame. Dilated 1-D convolutions
  (about 18 frames of context each side); trained on Praat's pitch of the
  teacher's speech (``anchor train pitch``).
- ``excitation``: per-frame F0 and voicing -> audio-rate excitation, its phase
  continued from a given starting phase, so a streaming vocoder can join
  blocks without a break in the pulse train.
"""

from __future__ import annotations

import math

import torch
from torch import nn

F0_REF = 120.0
#: Amplitude (RMS) of the voiced pulse train and of the unvoiced noise; the voiced part carries
#: a little noise too (breath).
PULSE_RMS = 0.1
UNVOICED_STD = 0.1
BREATH_STD = 0.01
#: Harmonics stop below this frequency (the mel's top is 8 kHz).
TOP_HZ = 7600.0
DILATIONS = (1, 2, 4, 8, 1)


class PitchHead(nn.Module):
    def __init__(self, n_mel: int = 80, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(n_mel, width, 5, padding=2), nn.LeakyReLU(0.1)]
        for d in DILATIONS:
            layers += [nn.Conv1d(width, width, 3, dilation=d, padding=d), nn.LeakyReLU(0.1)]
        layers.append(nn.Conv1d(width, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(mel)
        return out

    def f0(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F0 in Hz ``[B, T]`` and the probability that each frame is voiced ``[B, T]``."""
        out = self.forward(mel)
        return F0_REF * torch.exp(out[:, 0]), torch.sigmoid(out[:, 1])


def frame_phase(f0: torch.Tensor, hop: int, rate: int) -> torch.Tensor:
    """Phase advance (radians) over each frame at its F0: ``[B, T]``."""
    return 2 * math.pi * f0 * (hop / rate)


def _per_sample(x: torch.Tensor, hop: int) -> torch.Tensor:
    """``[B, T]`` frame values -> ``[B, T*hop]``, linearly between frame centres (held at the ends)."""
    t = x.shape[1]
    padded = torch.cat([x[:, :1], x, x[:, -1:]], 1)[:, None]
    up = nn.functional.interpolate(padded, size=(t + 2) * hop, mode="linear", align_corners=False)
    return up[:, 0, hop : (t + 1) * hop]


def excitation(
    f0: torch.Tensor,
    voiced: torch.Tensor,
    noise: torch.Tensor,
    *,
    hop: int,
    rate: int,
    phase0: torch.Tensor | None = None,
) -> torch.Tensor:
    """Audio-rate excitation ``[B, T*hop]``: a band-limited pulse train at ``f0`` (Hz, ``[B, T]``)
    weighted by ``voiced`` (0..1), plus ``noise`` (``[B, T*hop]``, unit normal) scaled for the
    unvoiced and voiced parts. ``phase0`` ``[B]``: the pulse train's phase at the first sample."""
    hz = _per_sample(f0.clamp(min=30.0), hop)
    v = _per_sample(voiced, hop)
    phase = _phase(hz, hop, rate)
    if phase0 is not None:
        phase = phase + phase0[:, None]
    phase = torch.remainder(phase, 2 * math.pi)  # small arguments keep sin() exact on every backend
    harmonics = torch.floor(TOP_HZ / hz).clamp(min=1.0)
    # sum_{k=1..K} cos(k phase) = sin((K + 1/2) phase) / (2 sin(phase / 2)) - 1/2 (Dirichlet's kernel)
    half = torch.sin(0.5 * phase)
    near_pulse = half.abs() < 1e-4
    safe = torch.where(near_pulse, torch.ones_like(half), half)
    train = torch.where(near_pulse, harmonics, torch.sin((harmonics + 0.5) * phase) / (2 * safe) - 0.5)
    pulses = train * (PULSE_RMS / torch.sqrt(harmonics / 2))
    return v * (pulses + BREATH_STD * noise) + (1 - v) * UNVOICED_STD * noise


def _phase(hz: torch.Tensor, hop: int, rate: int) -> torch.Tensor:
    """Phase at each sample ``[B, T*hop]`` of a pulse train at ``hz`` starting at 0: sample ``n`` has
    the advance over samples ``1..n``. Summed within each frame, then over frames wrapped to 2 pi,
    so float32 keeps it to ~1e-3 rad over a streaming block (one running sum drifts ~10x more)."""
    b = hz.shape[0]
    w = ((2 * math.pi / rate) * hz).reshape(b, -1, hop)
    within = torch.cumsum(w, dim=2)
    totals = within[:, :, -1]
    before = torch.remainder(torch.cumsum(totals, dim=1) - totals, 2 * math.pi)
    return (before[:, :, None] + within).reshape(b, -1) - w[:, :1, 0]


def frame_starts(f0: torch.Tensor, hop: int, rate: int) -> torch.Tensor:
    """The pulse train's phase at the start of each frame ``[B, T]`` (``excitation``'s sample
    ``k * hop`` for frame ``k``), for a start at phase 0."""
    return _phase(_per_sample(f0.clamp(min=30.0), hop), hop, rate)[:, ::hop]
