"""Tacotron 2 (Shen et al.), laid out like NVIDIA's published ``tacotron2_statedict.pt``.

Inference only, and incremental: ``stream`` decodes one mel frame per step
and yields postnet-refined frames in chunks as soon as the postnet's
receptive field (10 frames each side) is covered, so mel leaves while the
decoder runs. The prenet keeps its dropout on at inference (the published
model was trained and is run that way); ``prenet_dropout=False`` makes
decoding deterministic for tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

POSTNET_CONTEXT = 10  # 5 convolutions of kernel 5: 2 frames each side per layer


@dataclass(frozen=True)
class Tacotron2Config:
    n_symbols: int = 148
    embedding_dim: int = 512
    encoder_kernel_size: int = 5
    encoder_n_convolutions: int = 3
    attention_rnn_dim: int = 1024
    attention_dim: int = 128
    attention_location_n_filters: int = 32
    attention_location_kernel_size: int = 31
    decoder_rnn_dim: int = 1024
    prenet_dim: int = 256
    n_mel_channels: int = 80
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5
    gate_threshold: float = 0.5
    max_decoder_steps: int = 1000


class LinearNorm(nn.Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(n_in, n_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear_layer(x)
        return out


class ConvNorm(nn.Module):
    def __init__(self, n_in: int, n_out: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, kernel, padding=(kernel - 1) // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Encoder(nn.Module):
    def __init__(self, c: Tacotron2Config) -> None:
        super().__init__()
        self.convolutions = nn.ModuleList(
            nn.Sequential(
                ConvNorm(c.embedding_dim, c.embedding_dim, c.encoder_kernel_size),
                nn.BatchNorm1d(c.embedding_dim),
            )
            for _ in range(c.encoder_n_convolutions)
        )
        self.lstm = nn.LSTM(c.embedding_dim, c.embedding_dim // 2, 1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x[B, embedding, T]`` -> memory ``[B, T, embedding]``."""
        for conv in self.convolutions:
            x = F.relu(conv(x))
        out, _ = self.lstm(x.transpose(1, 2))
        return cast(torch.Tensor, out)


class LocationLayer(nn.Module):
    def __init__(self, filters: int, kernel: int, attention_dim: int) -> None:
        super().__init__()
        self.location_conv = ConvNorm(2, filters, kernel, bias=False)
        self.location_dense = LinearNorm(filters, attention_dim, bias=False)

    def forward(self, weights_cat: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.location_dense(self.location_conv(weights_cat).transpose(1, 2)))


class Attention(nn.Module):
    """Location-sensitive attention."""

    def __init__(self, c: Tacotron2Config) -> None:
        super().__init__()
        self.query_layer = LinearNorm(c.attention_rnn_dim, c.attention_dim, bias=False)
        self.memory_layer = LinearNorm(c.embedding_dim, c.attention_dim, bias=False)
        self.v = LinearNorm(c.attention_dim, 1, bias=False)
        self.location_layer = LocationLayer(
            c.attention_location_n_filters, c.attention_location_kernel_size, c.attention_dim
        )

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        processed_memory: torch.Tensor,
        weights_cat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        energies = self.v(
            torch.tanh(self.query_layer(query[:, None]) + self.location_layer(weights_cat) + processed_memory)
        ).squeeze(-1)
        weights = F.softmax(energies, dim=1)
        return torch.bmm(weights[:, None], memory).squeeze(1), weights


class Prenet(nn.Module):
    def __init__(self, n_in: int, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LinearNorm(a, b, bias=False) for a, b in zip([n_in, *sizes[:-1]], sizes, strict=True)
        )
        self.dropout = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), p=0.5, training=self.dropout)
        return x


class Postnet(nn.Module):
    def __init__(self, c: Tacotron2Config) -> None:
        super().__init__()
        sizes = (
            [c.n_mel_channels]
            + [c.postnet_embedding_dim] * (c.postnet_n_convolutions - 1)
            + [c.n_mel_channels]
        )
        self.convolutions = nn.ModuleList(
            nn.Sequential(ConvNorm(a, b, c.postnet_kernel_size), nn.BatchNorm1d(b))
            for a, b in itertools.pairwise(sizes)
        )

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel
        for i, conv in enumerate(self.convolutions):
            x = conv(x) if i == len(self.convolutions) - 1 else torch.tanh(conv(x))
        return mel + x


@dataclass
class DecoderState:
    attention_hidden: torch.Tensor
    attention_cell: torch.Tensor
    decoder_hidden: torch.Tensor
    decoder_cell: torch.Tensor
    weights: torch.Tensor
    weights_cum: torch.Tensor
    context: torch.Tensor


class Decoder(nn.Module):
    def __init__(self, c: Tacotron2Config) -> None:
        super().__init__()
        self.c = c
        self.prenet = Prenet(c.n_mel_channels, [c.prenet_dim, c.prenet_dim])
        self.attention_rnn = nn.LSTMCell(c.prenet_dim + c.embedding_dim, c.attention_rnn_dim)
        self.attention_layer = Attention(c)
        self.decoder_rnn = nn.LSTMCell(c.attention_rnn_dim + c.embedding_dim, c.decoder_rnn_dim)
        self.linear_projection = LinearNorm(c.decoder_rnn_dim + c.embedding_dim, c.n_mel_channels)
        self.gate_layer = LinearNorm(c.decoder_rnn_dim + c.embedding_dim, 1)

    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        b, t, _ = memory.shape
        z = memory.new_zeros
        c = self.c
        return DecoderState(
            z(b, c.attention_rnn_dim),
            z(b, c.attention_rnn_dim),
            z(b, c.decoder_rnn_dim),
            z(b, c.decoder_rnn_dim),
            z(b, t),
            z(b, t),
            z(b, c.embedding_dim),
        )

    def step(
        self, frame: torch.Tensor, s: DecoderState, memory: torch.Tensor, processed_memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        """One decoder step: previous mel frame ``[B, n_mel]`` -> (mel, gate logit, new state)."""
        x = torch.cat([self.prenet(frame), s.context], -1)
        ah, ac = self.attention_rnn(x, (s.attention_hidden, s.attention_cell))
        weights_cat = torch.stack([s.weights, s.weights_cum], 1)
        context, weights = self.attention_layer(ah, memory, processed_memory, weights_cat)
        dh, dc = self.decoder_rnn(torch.cat([ah, context], -1), (s.decoder_hidden, s.decoder_cell))
        out = torch.cat([dh, context], -1)
        state = DecoderState(ah, ac, dh, dc, weights, s.weights_cum + weights, context)
        return self.linear_projection(out), self.gate_layer(out), state


class Tacotron2(nn.Module):
    def __init__(self, config: Tacotron2Config | None = None) -> None:
        super().__init__()
        self.config = c = config or Tacotron2Config()
        self.embedding = nn.Embedding(c.n_symbols, c.embedding_dim)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.postnet = Postnet(c)

    def set_prenet_dropout(self, enabled: bool) -> None:
        self.decoder.prenet.dropout = enabled

    def encode(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symbol ids ``[B, T]`` -> (memory ``[B, T, 512]``, processed memory ``[B, T, 128]``)."""
        memory = self.encoder(self.embedding(ids).transpose(1, 2))
        return memory, self.decoder.attention_layer.memory_layer(memory)

    @torch.inference_mode()
    def decode_frames(self, ids: torch.Tensor) -> Iterator[torch.Tensor]:
        """Raw decoder mel frames ``[B, n_mel]``, one per step, until the gate fires or the cap."""
        decoder = self.decoder
        memory, processed = self.encode(ids)
        state = decoder.initial_state(memory)
        frame = memory.new_zeros(ids.shape[0], self.config.n_mel_channels)
        for _ in range(self.config.max_decoder_steps):
            frame, gate, state = decoder.step(frame, state, memory, processed)
            yield frame
            if bool((torch.sigmoid(gate) > self.config.gate_threshold).all()):
                return

    @torch.inference_mode()
    def stream(self, ids: torch.Tensor, chunk: int = 20) -> Iterator[torch.Tensor]:
        """Postnet-refined mel ``[B, n_mel, n]`` in chunks of about ``chunk`` frames, as decoded."""
        frames: list[torch.Tensor] = []
        done = 0
        for frame in self.decode_frames(ids):
            frames.append(frame)
            if len(frames) - done >= chunk + POSTNET_CONTEXT:
                yield self._refine(frames, done, done + chunk)
                done += chunk
        if len(frames) > done:
            yield self._refine(frames, done, len(frames))

    def _refine(self, frames: list[torch.Tensor], start: int, end: int) -> torch.Tensor:
        lo, hi = max(0, start - POSTNET_CONTEXT), min(len(frames), end + POSTNET_CONTEXT)
        mel = torch.stack(frames[lo:hi], -1)
        return cast(torch.Tensor, self.postnet(mel))[:, :, start - lo : end - lo]

    @torch.inference_mode()
    def infer(self, ids: torch.Tensor) -> torch.Tensor:
        """The whole utterance's postnet mel ``[B, n_mel, frames]``."""
        return cast(torch.Tensor, self.postnet(torch.stack(list(self.decode_frames(ids)), -1)))
