"""WaveGlow (Prenger et al.), inference form, laid out like NVIDIA's published model.

Plain convolutions (weight norm folded at load), one fused ``cond_layer`` per
WN block, and each invertible 1x1 convolution's inverse computed once at
load. ``forward(mel, z)`` takes the noise explicitly (``z = sigma * N(0, 1)``,
shaped ``[B, n_group, T*hop/n_group]``) so exports and parity checks are
deterministic; ``infer(mel, sigma)`` draws it like the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True)
class WaveGlowConfig:
    n_mel_channels: int = 80
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    n_layers: int = 8
    n_channels: int = 256
    kernel_size: int = 3
    hop_length: int = 256
    upsample_kernel: int = 1024

    def remaining_channels(self) -> list[int]:
        """Channels each flow transforms (early outputs leave every ``n_early_every`` flows)."""
        out, remaining = [], self.n_group
        for k in range(self.n_flows):
            if k % self.n_early_every == 0 and k > 0:
                remaining -= self.n_early_size
            out.append(remaining)
        return out


class WN(nn.Module):
    """The affine-coupling network: dilated gated convolutions conditioned on the mel."""

    def __init__(self, n_in: int, n_cond: int, n_layers: int, n_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        #: Run the convolutions under autocast at this dtype (bf16 trains 1.5x faster on AMX CPUs);
        #: the output is float32 again, so the flows' coupling arithmetic stays exact.
        self.autocast_dtype: torch.dtype | None = None
        self.start = nn.Conv1d(n_in, n_channels, 1)
        self.end = nn.Conv1d(n_channels, 2 * n_in, 1)
        self.cond_layer = nn.Conv1d(n_cond, 2 * n_channels * n_layers, 1)
        self.in_layers = nn.ModuleList(
            nn.Conv1d(
                n_channels, 2 * n_channels, kernel_size, dilation=2**i, padding=(kernel_size - 1) * 2**i // 2
            )
            for i in range(n_layers)
        )
        self.res_skip_layers = nn.ModuleList(
            nn.Conv1d(n_channels, 2 * n_channels if i < n_layers - 1 else n_channels, 1)
            for i in range(n_layers)
        )

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._forward(audio, spect)
        with torch.autocast(audio.device.type, dtype=self.autocast_dtype):
            return self._forward(audio, spect).float()

    def _forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        cond = self.cond_layer(spect)
        c = self.n_channels
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers, strict=True)):
            x = in_layer(audio) + cond[:, 2 * c * i : 2 * c * (i + 1)]
            acts = res_skip(torch.tanh(x[:, :c]) * torch.sigmoid(x[:, c:]))
            if i < self.n_layers - 1:
                audio = audio + acts[:, :c]
                output = output + acts[:, c:]
            else:
                output = output + acts
        out: torch.Tensor = self.end(output)
        return out


class Invertible1x1Conv(nn.Module):
    w_inverse: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 1, bias=False)
        self.register_buffer("w_inverse", torch.eye(channels)[..., None], persistent=False)

    def refresh_inverse(self) -> None:
        """Invert the learned matrix (in float64) once weights are loaded."""
        w = self.conv.weight.detach().squeeze(-1).double()
        self.w_inverse = torch.linalg.inv(w).to(self.conv.weight.dtype)[..., None]

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        if self.training:  # a trainer backpropagates through the inverse, so it is taken afresh
            inverse = torch.linalg.inv(self.conv.weight.squeeze(-1).float()).to(z.dtype)[..., None]
            return nn.functional.conv1d(z, inverse)
        return nn.functional.conv1d(z, self.w_inverse.to(z.dtype))


class WaveGlow(nn.Module):
    def __init__(self, config: WaveGlowConfig) -> None:
        super().__init__()
        if config.n_group % 2:
            raise ValueError(f"n_group must be even, got {config.n_group}")
        self.config = config
        c = config
        self.upsample = nn.ConvTranspose1d(
            c.n_mel_channels, c.n_mel_channels, c.upsample_kernel, stride=c.hop_length
        )
        remaining = c.remaining_channels()
        self.WN = nn.ModuleList(
            WN(r // 2, c.n_mel_channels * c.n_group, c.n_layers, c.n_channels, c.kernel_size)
            for r in remaining
        )
        self.convinv = nn.ModuleList(Invertible1x1Conv(r) for r in remaining)
        self.n_remaining_channels = remaining[-1]

    def refresh_inverses(self) -> None:
        for conv in self.convinv:
            cast(Invertible1x1Conv, conv).refresh_inverse()

    def _condition(self, mel: torch.Tensor) -> torch.Tensor:
        """Upsample the mel to audio rate and group it: ``[B, n_mel*n_group, T*hop/n_group]``."""
        c = self.config
        spect = self.upsample(mel)[:, :, : mel.shape[2] * c.hop_length]  # drop the kernel overhang
        b, m, t = spect.shape
        spect = spect.reshape(b, m, t // c.n_group, c.n_group).permute(0, 2, 1, 3)
        grouped: torch.Tensor = spect.reshape(b, t // c.n_group, m * c.n_group).permute(0, 2, 1)
        return grouped

    def forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``mel[B, n_mel, T]``, ``z[B, n_group, T*hop/n_group]`` -> audio ``[B, T*hop]``."""
        c = self.config
        spect = self._condition(mel)
        audio = z[:, : self.n_remaining_channels]
        used = self.n_remaining_channels
        for k in reversed(range(c.n_flows)):
            half = audio.shape[1] // 2
            audio_0, audio_1 = audio[:, :half], audio[:, half:]
            out = cast(WN, self.WN[k])(audio_0, spect)
            log_s, shift = out[:, half:], out[:, :half]
            audio = torch.cat([audio_0, (audio_1 - shift) / torch.exp(log_s)], 1)
            audio = cast(Invertible1x1Conv, self.convinv[k]).reverse(audio)
            if k % c.n_early_every == 0 and k > 0:
                audio = torch.cat([z[:, used : used + c.n_early_size], audio], 1)
                used += c.n_early_size
        return audio.permute(0, 2, 1).reshape(audio.shape[0], -1)

    def noise(
        self, mel: torch.Tensor, sigma: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        c = self.config
        shape = (mel.shape[0], c.n_group, mel.shape[2] * c.hop_length // c.n_group)
        return sigma * torch.randn(shape, generator=generator, dtype=mel.dtype, device=mel.device)

    @torch.inference_mode()
    def infer(
        self, mel: torch.Tensor, sigma: float = 0.6, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Audio ``[B, T*hop]`` for ``mel[B, n_mel, T]``, noise drawn at ``sigma`` like the reference."""
        return self.forward(mel, self.noise(mel, sigma, generator))
