"""A FastSpeech-style acoustic model: phoneme ids -> durations -> log-mel (22050 Hz, hop 256, 80 mels).

Non-autoregressive, built to stream:

- the encoder (self-attention blocks over the phonemes) and the duration
  predictor run once per sentence, which is cheap;
- the decoder is convolutions only, with a known receptive field, so mel
  frames can be decoded chunk by chunk (``decode_chunks``) as soon as the
  durations are known, each chunk identical to decoding the whole sentence.

Trained by distillation from a Piper voice: its phoneme ids, its own
durations (the ``w_ceil`` of its duration predictor) and its audio's mels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AcousticConfig:
    n_symbols: int = 256
    dim: int = 192
    heads: int = 2
    encoder_layers: int = 4
    ffn_kernel: int = 9
    decoder_channels: int = 256
    decoder_dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4, 1, 1)
    decoder_kernel: int = 5
    postnet_layers: int = 4
    postnet_channels: int = 256
    postnet_kernel: int = 5
    n_mels: int = 80
    max_log_duration: float = 5.0

    def as_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AcousticConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "decoder_dilations" in known:
            known["decoder_dilations"] = tuple(int(d) for d in known["decoder_dilations"])  # type: ignore[attr-defined]
        return cls(**known)  # type: ignore[arg-type]

    def receptive_radius(self) -> int:
        """Frames either side of a decoder output frame that can change it."""
        half = self.decoder_kernel // 2
        return sum(half * d for d in self.decoder_dilations) + self.postnet_layers * (
            self.postnet_kernel // 2
        )


class _Block(nn.Module):
    """Pre-norm transformer block with a convolutional feed-forward (FastSpeech's FFT block)."""

    def __init__(self, dim: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.conv1 = nn.Conv1d(dim, 2 * dim, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(2 * dim, dim, 1)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        h, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)
        x = x + self.dropout(h)
        h = self.norm2(x).transpose(1, 2)
        h = self.conv2(torch.relu(self.conv1(h))).transpose(1, 2)
        out: torch.Tensor = x + self.dropout(h)
        if pad is not None:
            out = out.masked_fill(pad[..., None], 0.0)
        return out


class _ConvNorm(nn.Module):
    """Conv1d -> LayerNorm over channels -> ReLU, with a residual when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.norm = nn.LayerNorm(cout)
        self.residual = cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2)
        h = torch.relu(h)
        return x + h if self.residual else h


class DurationPredictor(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(_ConvNorm(dim, dim, 3), nn.Dropout(0.1), _ConvNorm(dim, dim, 3))
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[B, P, dim]`` -> ``log(1 + frames)`` per phoneme ``[B, P]``."""
        h = self.layers(x.transpose(1, 2)).transpose(1, 2)
        out: torch.Tensor = self.out(h).squeeze(-1)
        return out


class FastSpeech(nn.Module):
    position: torch.Tensor

    def __init__(self, config: AcousticConfig = AcousticConfig()) -> None:
        super().__init__()
        c = config
        self.config = config
        self.embedding = nn.Embedding(c.n_symbols, c.dim)
        self.register_buffer("position", _sinusoids(4096, c.dim), persistent=False)
        self.encoder = nn.ModuleList(_Block(c.dim, c.heads, c.ffn_kernel) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.dim)
        self.durations = DurationPredictor(c.dim)
        self.decoder_in = nn.Conv1d(c.dim, c.decoder_channels, 1)
        self.decoder = nn.Sequential(
            *(
                _ConvNorm(c.decoder_channels, c.decoder_channels, c.decoder_kernel, d)
                for d in c.decoder_dilations
            )
        )
        self.mel_out = nn.Conv1d(c.decoder_channels, c.n_mels, 1)
        post: list[nn.Module] = []
        for i in range(c.postnet_layers):
            cin = c.n_mels if i == 0 else c.postnet_channels
            cout = c.n_mels if i == c.postnet_layers - 1 else c.postnet_channels
            post.append(nn.Conv1d(cin, cout, c.postnet_kernel, padding=c.postnet_kernel // 2))
            if i < c.postnet_layers - 1:
                post.append(nn.Tanh())
        self.postnet = nn.Sequential(*post)

    def encode(
        self, ids: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids[B, P]`` -> hidden ``[B, P, dim]`` and predicted ``log(1 + frames)`` ``[B, P]``."""
        x = self.embedding(ids) + self.position[: ids.shape[1]]
        pad = None
        if lengths is not None:
            pad = torch.arange(ids.shape[1], device=ids.device)[None, :] >= lengths[:, None]
        for block in self.encoder:
            x = block(x, pad)
        x = self.encoder_norm(x)
        log_durations = self.durations(x)
        if pad is not None:
            log_durations = log_durations.masked_fill(pad, 0.0)
        return x, log_durations

    def frames_of(self, log_durations: torch.Tensor, length_scale: float = 1.0) -> torch.Tensor:
        """Whole frames per phoneme from predicted log durations (at least 0)."""
        d = torch.expm1(log_durations.clamp(max=self.config.max_log_duration)) * length_scale
        return torch.clamp(torch.round(d), min=0).long()

    def decode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expanded hidden ``[B, T, dim]`` -> mel before and after the postnet, ``[B, n_mels, T]`` each."""
        h = self.decoder(self.decoder_in(frames.transpose(1, 2)))
        mel = self.mel_out(h)
        return mel, mel + self.postnet(mel)

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor, durations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: teacher durations ``[B, P]`` -> (mel, mel after postnet, predicted log durations)."""
        hidden, log_durations = self.encode(ids, lengths)
        expanded = expand_batch(hidden, durations)
        mel, post = self.decode(expanded)
        return mel, post, log_durations

    @torch.inference_mode()
    def decode_chunks(self, expanded: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
        """The final mel ``[1, n_mels, <=chunk]`` of ``expanded[1, T, dim]``, chunk by chunk, exactly."""
        radius = self.config.receptive_radius()
        total = expanded.shape[1]
        for start in range(0, total, chunk):
            end = min(total, start + chunk)
            lo, hi = max(0, start - radius), min(total, end + radius)
            _, post = self.decode(expanded[:, lo:hi])
            yield post[:, :, start - lo : end - lo]


def expand(hidden: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """The length regulator for one sentence: ``hidden[1, P, dim]`` repeated ``durations[P]`` times."""
    return torch.repeat_interleave(hidden, durations, dim=1)


def expand_batch(hidden: torch.Tensor, durations: torch.Tensor) -> torch.Tensor:
    """``hidden[B, P, dim]``, ``durations[B, P]`` -> ``[B, max frames, dim]``, zero-padded."""
    rows = [torch.repeat_interleave(h, d, dim=0) for h, d in zip(hidden, durations, strict=True)]
    return nn.utils.rnn.pad_sequence(rows, batch_first=True)


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32)[:, None]
    scale = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-torch.log(torch.tensor(10000.0)) / dim)
    )
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale)
    return table
