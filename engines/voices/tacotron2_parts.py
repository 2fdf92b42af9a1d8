"""NVIDIA Tacotron 2 checkpoints (``tacotron2_statedict.pt``): loading, and the parts as engines.

The file is ``{'state_dict': {...}, 'optimizer': ..., 'iteration': ..., 'learning_rate': ...}``
(``module.`` prefixes when saved from DataParallel). The model exports as
three ONNX graphs: the encoder, one decoder step (all recurrent state as
explicit inputs and outputs, so any runtime can drive the loop) and the postnet.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.errors import WeightsError
from engines.models.tacotron2 import DecoderState, Tacotron2, Tacotron2Config
from engines.spec import Dim, EngineSpec, TensorSpec, by_name
from engines.weights import WeightsSource, check_state_dict, read_checkpoint, strip_prefix


def load_tacotron2(path: Path | str) -> Tacotron2:
    path = Path(path)
    data = read_checkpoint(path)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or "embedding.weight" not in strip_prefix(state, "module."):
        raise WeightsError(f"{path} is not a Tacotron 2 checkpoint (no state_dict with embedding.weight)")
    state = strip_prefix(state, "module.")
    config = Tacotron2Config(
        n_symbols=state["embedding.weight"].shape[0],
        n_mel_channels=state["decoder.linear_projection.linear_layer.weight"].shape[0]
        if "decoder.linear_projection.linear_layer.weight" in state
        else 80,
    )
    model = Tacotron2(config)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.eval()


class EncoderPart(nn.Module):
    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(ids)


class DecoderStepPart(nn.Module):
    """One step with the recurrent state passed in and out (prenet dropout off: deterministic)."""

    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.decoder = model.decoder
        model.set_prenet_dropout(False)

    def forward(
        self,
        frame: torch.Tensor,
        attention_hidden: torch.Tensor,
        attention_cell: torch.Tensor,
        decoder_hidden: torch.Tensor,
        decoder_cell: torch.Tensor,
        weights: torch.Tensor,
        weights_cum: torch.Tensor,
        context: torch.Tensor,
        memory: torch.Tensor,
        processed_memory: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        state = DecoderState(
            attention_hidden, attention_cell, decoder_hidden, decoder_cell, weights, weights_cum, context
        )
        mel, gate, s = self.decoder.step(frame, state, memory, processed_memory)
        return (
            mel,
            gate,
            s.attention_hidden,
            s.attention_cell,
            s.decoder_hidden,
            s.decoder_cell,
            s.weights,
            s.weights_cum,
            s.context,
        )


class PostnetPart(nn.Module):
    def __init__(self, model: Tacotron2) -> None:
        super().__init__()
        self.postnet = model.postnet

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.postnet(mel))


#: The decoder step's recurrent state, passed in and out of every call: name and width (``tokens``:
#: the phrase's length in symbols).
STATE = (
    ("attention_hidden", 1024),
    ("attention_cell", 1024),
    ("decoder_hidden", 1024),
    ("decoder_cell", 1024),
    ("weights", "tokens"),
    ("weights_cum", "tokens"),
    ("context", 512),
)


def _ids_or_floats(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.generic]:
    if name == "ids":
        return np.asarray(rng.integers(12, 148, size=shapes[name], dtype=np.int64))
    if name in ("weights", "weights_cum"):
        w = rng.random(shapes[name], dtype=np.float32)
        return np.asarray(w / w.sum(axis=1, keepdims=True), dtype=np.float32)
    return (rng.standard_normal(shapes[name]) * 0.5).astype(np.float32)


def tacotron2_specs(weights: WeightsSource | None = None) -> dict[str, EngineSpec]:
    source = weights or WeightsSource.project("tacotron2_statedict.pt")
    axes = {"batch": Dim(1, 1, 8), "tokens": Dim(2, 64, 512), "frames": Dim(1, 40, 2000)}
    state_inputs = tuple(TensorSpec(n, "float32", ("batch", d)) for n, d in STATE)
    memory = (
        TensorSpec("memory", "float32", ("batch", "tokens", 512)),
        TensorSpec("processed_memory", "float32", ("batch", "tokens", 128)),
    )
    part = partial(EngineSpec, axes=axes, weights=source, sample_value=_ids_or_floats)
    return by_name(
        part(
            name="tacotron2-encoder",
            description="Tacotron 2 encoder: symbol ids -> memory",
            inputs=(TensorSpec("ids", "int64", ("batch", "tokens")),),
            outputs=memory,
            load=lambda p: EncoderPart(load_tacotron2(p)),
        ),
        part(
            name="tacotron2-decoder-step",
            description="Tacotron 2 decoder: one step, state in and out",
            inputs=(TensorSpec("frame", "float32", ("batch", 80)), *state_inputs, *memory),
            outputs=(
                TensorSpec("mel", "float32", ("batch", 80)),
                TensorSpec("gate", "float32", ("batch", 1)),
                *(TensorSpec(f"new_{t.name}", t.dtype, t.shape) for t in state_inputs),
            ),
            load=lambda p: DecoderStepPart(load_tacotron2(p)),
        ),
        part(
            name="tacotron2-postnet",
            description="Tacotron 2 postnet: decoder mel -> refined mel",
            inputs=(TensorSpec("mel", "float32", ("batch", 80, "frames")),),
            outputs=(TensorSpec("refined", "float32", ("batch", 80, "frames")),),
            load=lambda p: PostnetPart(load_tacotron2(p)),
        ),
    )
