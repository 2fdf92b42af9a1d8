"""WaveGlow (Prenger et al.), inference form, laid out like NVIDIA's published model.

Plain convolutions (weight norm folded at load), one fused ``cond_layer`` per
WN block, and each invertible 1x1 convolution's inverse computed once at
load. ``forward(mel, z)`` takes the noise explicitly (``z = sigma * N(0, 1)``,
shaped ``[B, n_group, T*hop/n_group]``) so exports and parity checks are
deterministic; ``infer(mel, sigma)`` draws it like the reference does.

Our own checkpoints may add a source (``source=True``: a ``pitch`` head,
``engines/models/source.py``): z is then the speaker's excitation, a pulse
train at the F0 the head reads off the mel, grouped like the audio, instead
of noise. The flows are NVIDIA's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from engines.models.source import PitchHead, excitation

SAMPLE_RATE = 22050  # the rate of the mels every WaveGlow here is trained on


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

    def forward(
        self, audio: torch.Tensor, spect: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``cond``: this WN's conditioning already computed (a folded WaveGlow); else from ``spect``."""
        if self.autocast_dtype is None:
            return self._forward(audio, spect, cond)
        with torch.autocast(audio.device.type, dtype=self.autocast_dtype):
            return self._forward(audio, spect, cond).float()

    def _forward(self, audio: torch.Tensor, spect: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        if cond is None:
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
    pitch: PitchHead | None

    def __init__(self, config: WaveGlowConfig, *, source: bool = False) -> None:
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
        self.pitch = PitchHead(c.n_mel_channels) if source else None
        #: Set by ``fold_conditioning``: per flow, the upsampler and that flow's ``cond_layer`` as one
        #: transposed convolution straight from the mel (weights, bias).
        self.folded: list[tuple[torch.Tensor, torch.Tensor]] | None = None

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

    def folded_size(self) -> int:
        """Floats the folded conditioning would hold: each flow's out-channels x kernel / n_group x n_mel."""
        c = self.config
        per_flow = 2 * c.n_channels * c.n_layers * (c.upsample_kernel // c.n_group) * c.n_mel_channels
        return per_flow * c.n_flows

    @torch.no_grad()
    def fold_conditioning(self) -> None:
        """Fold the upsampler into every flow's ``cond_layer`` (both linear) at load time.

        Group ``t = s * f + r`` (``s = hop / n_group`` groups per mel frame) is conditioned by mel
        frames ``f - q`` for ``q < upsample_kernel / hop``, so each flow's conditioning becomes one
        matrix product of the mel stacked with its ``q``-frame delays: ``[s * out, q * n_mel]``.
        Exact up to rounding. It trades memory for work: each flow gets ``kernel / n_group`` taps
        per mel channel (``folded_size``). For our small WaveGlow (64 channels, kernel 512) the
        conditioning was ~70 % of the FLOPs and is 4x cheaper folded (84 MB of weights): the whole
        model runs 1.7x faster on one thread. Inference only: the folded weights do not follow
        later training."""
        c = self.config
        s = c.hop_length // c.n_group
        if c.hop_length % c.n_group or c.upsample_kernel % c.hop_length:
            raise ValueError("folding needs hop_length % n_group == upsample_kernel % hop_length == 0")
        delays = c.upsample_kernel // c.hop_length
        up_w = self.upsample.weight  # [n_mel_in, n_mel, kernel]; kernel index = hop * q + n_group * r + g
        up_b = cast(torch.Tensor, self.upsample.bias)
        n_in, n_mel = up_w.shape[0], up_w.shape[1]
        taps = up_w.reshape(n_in, n_mel, delays, s, c.n_group)  # [i, m, q, r, g]
        folded = []
        for wn in self.WN:
            layer = cast(WN, wn).cond_layer
            # [o, m, g]: the grouped channel m * n_group + g
            w = layer.weight.squeeze(-1).reshape(-1, n_mel, c.n_group)
            weight = torch.einsum("imqrg,omg->orqi", taps, w).reshape(w.shape[0] * s, delays * n_in)
            bias = cast(torch.Tensor, layer.bias) + w.sum(-1) @ up_b
            folded.append((weight.contiguous(), bias.contiguous()))
        self.folded = folded

    def _folded_condition(self, mel: torch.Tensor, k: int) -> torch.Tensor:
        assert self.folded is not None
        c = self.config
        weight, bias = self.folded[k]
        s = c.hop_length // c.n_group
        delays = c.upsample_kernel // c.hop_length
        b, frames = mel.shape[0], mel.shape[2]
        padded = nn.functional.pad(mel, (delays - 1, 0))  # frames before the first contribute nothing
        stacked = torch.cat(
            [padded[:, :, delays - 1 - q : delays - 1 - q + frames] for q in range(delays)], 1
        )
        out = torch.matmul(weight.to(mel.dtype), stacked)  # [B, out * s, frames]
        out = out.reshape(b, -1, s, frames).permute(0, 1, 3, 2).reshape(b, -1, frames * s)
        return out + bias.to(mel.dtype)[None, :, None]

    def forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``mel[B, n_mel, T]``, ``z[B, n_group, T*hop/n_group]`` -> audio ``[B, T*hop]``."""
        c = self.config
        spect = mel if self.folded is not None else self._condition(mel)
        audio = z[:, : self.n_remaining_channels]
        used = self.n_remaining_channels
        for k in reversed(range(c.n_flows)):
            half = audio.shape[1] // 2
            audio_0, audio_1 = audio[:, :half], audio[:, half:]
            cond = self._folded_condition(mel, k) if self.folded is not None else None
            out = cast(WN, self.WN[k])(audio_0, spect, cond)
            log_s, shift = out[:, half:], out[:, :half]
            audio = torch.cat([audio_0, (audio_1 - shift) / torch.exp(log_s)], 1)
            audio = cast(Invertible1x1Conv, self.convinv[k]).reverse(audio)
            if k % c.n_early_every == 0 and k > 0:
                audio = torch.cat([z[:, used : used + c.n_early_size], audio], 1)
                used += c.n_early_size
        return audio.permute(0, 2, 1).reshape(audio.shape[0], -1)

    def group(self, audio: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, T]`` as z ``[B, n_group, T/n_group]``: sample ``g + n_group*t`` at ``[g, t]``."""
        n = self.config.n_group
        return audio.reshape(audio.shape[0], -1, n).permute(0, 2, 1)

    def source_z(
        self, mel: torch.Tensor, noise: torch.Tensor, phase0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The excitation as z, from unit ``noise`` ``[B, T*hop]``; needs the pitch head."""
        if self.pitch is None:
            raise ValueError("this WaveGlow has no source (pitch head)")
        f0, voiced = self.pitch.f0(mel)
        c = self.config
        return self.group(excitation(f0, voiced, noise, hop=c.hop_length, rate=SAMPLE_RATE, phase0=phase0))

    def noise(
        self, mel: torch.Tensor, sigma: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z for ``mel``: noise at ``sigma``, or with a source, the excitation (``sigma`` unused)."""
        c = self.config
        samples = mel.shape[2] * c.hop_length
        if self.pitch is not None:
            unit = torch.randn(mel.shape[0], samples, generator=generator, dtype=mel.dtype, device=mel.device)
            return self.source_z(mel, unit)
        shape = (mel.shape[0], c.n_group, samples // c.n_group)
        return sigma * torch.randn(shape, generator=generator, dtype=mel.dtype, device=mel.device)

    @torch.inference_mode()
    def infer(
        self, mel: torch.Tensor, sigma: float = 0.6, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Audio ``[B, T*hop]`` for ``mel[B, n_mel, T]``, noise drawn at ``sigma`` like the reference."""
        return self.forward(mel, self.noise(mel, sigma, generator))
