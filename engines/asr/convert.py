"""CTranslate2 Whisper -> openai-whisper checkpoint (``{'dims', 'model_state_dict'}``), losslessly.

Fused self-attention q|k|v and cross-attention k|v are split along dim 0;
the key bias, all zeros in CTranslate2 and absent in openai-whisper, is
dropped (a non-zero one is refused, since dropping it would change the
model); the stored positional embeddings are kept as they are. Values keep
their dtype (float16 for the packaged tiny.en), so nothing is rounded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.asr.ct2_reader import CT2Model, read_ct2
from engines.errors import WeightsError


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))


def _layers(model: CT2Model, side: str) -> int:
    found = {int(m[1]) for k in model.variables if (m := re.match(rf"{side}/layer_(\d+)/", k))}
    return max(found) + 1 if found else 0


def _split_qkv(model: CT2Model, src: str, dst: str, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    weight, bias = model.get(f"{src}/weight"), model.get(f"{src}/bias")
    out: dict[str, torch.Tensor] = {}
    for name, w, b in zip(parts, np.split(weight, len(parts)), np.split(bias, len(parts)), strict=True):
        out[f"{dst}.{name}.weight"] = _t(w)
        if name == "key":
            if np.any(b != 0):
                raise WeightsError(f"{src}: the key bias is not zero; openai-whisper has no key bias")
        else:
            out[f"{dst}.{name}.bias"] = _t(b)
    return out


def _linear(model: CT2Model, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": _t(model.get(f"{src}/weight")), f"{dst}.bias": _t(model.get(f"{src}/bias"))}


def _norm(model: CT2Model, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": _t(model.get(f"{src}/gamma")), f"{dst}.bias": _t(model.get(f"{src}/beta"))}


def ct2_to_openai(model: CT2Model) -> dict[str, Any]:
    if model.spec != "WhisperSpec":
        raise WeightsError(f"not a Whisper model: the CTranslate2 spec is {model.spec}")
    sd: dict[str, torch.Tensor] = {
        "encoder.positional_embedding": _t(model.get("encoder/position_encodings/encodings")),
        **_linear(model, "encoder/conv1", "encoder.conv1"),
        **_linear(model, "encoder/conv2", "encoder.conv2"),
        **_norm(model, "encoder/layer_norm", "encoder.ln_post"),
        "decoder.token_embedding.weight": _t(model.get("decoder/embeddings/weight")),
        "decoder.positional_embedding": _t(model.get("decoder/position_encodings/encodings")),
        **_norm(model, "decoder/layer_norm", "decoder.ln"),
    }
    for i in range(_layers(model, "encoder")):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        sd |= _split_qkv(model, f"{src}/self_attention/linear_0", f"{dst}.attn", ("query", "key", "value"))
        sd |= _linear(model, f"{src}/self_attention/linear_1", f"{dst}.attn.out")
        sd |= _norm(model, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        sd |= _linear(model, f"{src}/ffn/linear_0", f"{dst}.mlp.0") | _linear(
            model, f"{src}/ffn/linear_1", f"{dst}.mlp.2"
        )
        sd |= _norm(model, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
    for i in range(_layers(model, "decoder")):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        sd |= _split_qkv(model, f"{src}/self_attention/linear_0", f"{dst}.attn", ("query", "key", "value"))
        sd |= _linear(model, f"{src}/self_attention/linear_1", f"{dst}.attn.out")
        sd |= _norm(model, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        sd |= _linear(model, f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
        sd |= _split_qkv(model, f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"))
        sd |= _linear(model, f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
        sd |= _norm(model, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        sd |= _linear(model, f"{src}/ffn/linear_0", f"{dst}.mlp.0") | _linear(
            model, f"{src}/ffn/linear_1", f"{dst}.mlp.2"
        )
        sd |= _norm(model, f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
    enc_pos, dec_pos = sd["encoder.positional_embedding"], sd["decoder.positional_embedding"]
    dims = {
        "n_mels": int(sd["encoder.conv1.weight"].shape[1]),
        "n_audio_ctx": int(enc_pos.shape[0]),
        "n_audio_state": int(enc_pos.shape[1]),
        "n_audio_head": int(model.get("encoder/num_heads")),
        "n_audio_layer": _layers(model, "encoder"),
        "n_vocab": int(sd["decoder.token_embedding.weight"].shape[0]),
        "n_text_ctx": int(dec_pos.shape[0]),
        "n_text_state": int(dec_pos.shape[1]),
        "n_text_head": int(model.get("decoder/num_heads")),
        "n_text_layer": _layers(model, "decoder"),
    }
    return {"dims": dims, "model_state_dict": sd}


def convert_ct2_whisper(model_dir: Path, out: Path | None = None) -> dict[str, Any]:
    """Convert the CTranslate2 Whisper in ``model_dir``; save it to ``out`` (a ``.pt``) when given."""
    checkpoint = ct2_to_openai(read_ct2(model_dir / "model.bin"))
    if out is not None:
        torch.save(checkpoint, out)
    return checkpoint
