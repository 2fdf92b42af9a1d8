"""Whisper (Radford et al.) in the openai-whisper layout, so its checkpoints load as they are.

``Whisper(dims)`` takes the checkpoint's ``dims``; ``load_whisper`` reads
``{'dims', 'model_state_dict'}`` files (openai's own, or converted from
CTranslate2 by ``engines.asr.convert``). Layer norms run in float32 as in
the original, whatever the weights' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engines.errors import WeightsError
from engines.weights import check_state_dict, read_checkpoint


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class Attention(nn.Module):
    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(
        self, x: torch.Tensor, source: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        src = x if source is None else source
        q, k, v = self.query(x), self.key(src), self.value(src)
        b, t, c = q.shape
        d = c // self.n_head
        scale = d**-0.25
        q = q.view(b, t, self.n_head, d).permute(0, 2, 1, 3) * scale
        k = k.view(b, k.shape[1], self.n_head, d).permute(0, 2, 3, 1) * scale
        v = v.view(b, v.shape[1], self.n_head, d).permute(0, 2, 1, 3)
        scores = q @ k
        if mask is not None:
            scores = scores + mask[:t, :t]
        weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
        out: torch.Tensor = self.out((weights @ v).permute(0, 2, 1, 3).flatten(start_dim=2))
        return out


class Block(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross: bool) -> None:
        super().__init__()
        self.attn = Attention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = Attention(n_state, n_head) if cross else None
        self.cross_attn_ln = LayerNorm(n_state) if cross else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def forward(
        self, x: torch.Tensor, audio: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), mask=mask)
        if self.cross_attn is not None and self.cross_attn_ln is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), audio)
        out: torch.Tensor = x + self.mlp(self.mlp_ln(x))
        return out


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class AudioEncoder(nn.Module):
    positional_embedding: torch.Tensor

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, 3, padding=1)
        self.conv2 = nn.Conv1d(dims.n_audio_state, dims.n_audio_state, 3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, dims.n_audio_state))
        self.blocks = nn.ModuleList(
            Block(dims.n_audio_state, dims.n_audio_head, False) for _ in range(dims.n_audio_layer)
        )
        self.ln_post = LayerNorm(dims.n_audio_state)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        x = (x + self.positional_embedding[: x.shape[1]]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.ln_post(x)
        return out


class TextDecoder(nn.Module):
    mask: torch.Tensor

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.n_text_state)
        self.positional_embedding = nn.Parameter(torch.empty(dims.n_text_ctx, dims.n_text_state))
        self.blocks = nn.ModuleList(
            Block(dims.n_text_state, dims.n_text_head, True) for _ in range(dims.n_text_layer)
        )
        self.ln = LayerNorm(dims.n_text_state)
        mask = torch.empty(dims.n_text_ctx, dims.n_text_ctx).fill_(-np.inf).triu_(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[-1]]
        x = x.to(audio.dtype)
        for block in self.blocks:
            x = block(x, audio, mask=self.mask)
        x = self.ln(x)
        logits: torch.Tensor = (x @ self.token_embedding.weight.to(x.dtype).T).float()
        return logits


class Whisper(nn.Module):
    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[B, n_mels, 2*n_audio_ctx]`` -> audio features ``[B, n_audio_ctx, n_audio_state]``."""
        out: torch.Tensor = self.encoder(mel)
        return out

    def logits(self, tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(tokens, audio)
        return out

    @torch.inference_mode()
    def greedy(self, mel: torch.Tensor, prompt: list[int], eot: int, max_tokens: int = 224) -> list[int]:
        """Plain arg-max decoding (no token suppression) after ``prompt``; stops at ``eot``."""
        audio = self.encode(mel)
        tokens = torch.tensor([prompt])
        out: list[int] = []
        for _ in range(max_tokens):
            nxt = int(self.logits(tokens, audio)[0, -1].argmax())
            if nxt == eot:
                break
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], 1)
        return out


def load_whisper(path: Path | str, *, dtype: torch.dtype = torch.float32) -> Whisper:
    """An openai-whisper ``.pt`` (``{'dims', 'model_state_dict'}``), any size or language set."""
    path = Path(path)
    data: Any = read_checkpoint(path)
    if not isinstance(data, dict) or "dims" not in data or "model_state_dict" not in data:
        raise WeightsError(
            f"{path} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')"
        )
    try:
        dims = WhisperDims(**data["dims"])
    except TypeError as exc:
        raise WeightsError(f"{path}: bad Whisper dims: {exc}") from None
    model = Whisper(dims)
    state = data["model_state_dict"]
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.to(dtype).eval()
