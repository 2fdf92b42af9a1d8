"""Our acoustic model's checkpoint: ``{'model': state_dict (fp16 when shipped), 'config': {...}, 'step'}``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.errors import WeightsError
from engines.models.fastspeech import AcousticConfig, FastSpeech
from engines.spec import Dim, EngineSpec, TensorSpec, by_name
from engines.weights import WeightsSource, check_state_dict, read_checkpoint

ACOUSTIC_WEIGHTS = WeightsSource.project("acoustic.pt")


def _read(path: Path) -> tuple[dict[str, torch.Tensor], AcousticConfig]:
    data = read_checkpoint(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise WeightsError(f"{path} is not an acoustic-model checkpoint (no 'model' state dict)")
    raw = data.get("config")
    if not isinstance(raw, dict):
        raise WeightsError(f"{path} has no 'config' for its acoustic model")
    try:
        config = AcousticConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad acoustic config: {exc}") from None
    return data["model"], config


def acoustic_config(path: Path | str) -> AcousticConfig:
    """The architecture an acoustic checkpoint declares (blocking: reads the file)."""
    return _read(Path(path))[1]


def load_acoustic(path: Path | str) -> FastSpeech:
    """A ready acoustic model (eval mode, float32) from a checkpoint ``anchor train acoustic`` wrote."""
    path = Path(path)
    weights, config = _read(path)
    model = FastSpeech(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.eval()


def default_acoustic() -> FastSpeech:
    return load_acoustic(ACOUSTIC_WEIGHTS.resolve())


@torch.inference_mode()
def mel_of(model: FastSpeech, ids: list[int], length_scale: float = 1.0) -> torch.Tensor:
    """The whole-sentence log-mel ``[80, frames]`` for Piper phoneme ids."""
    hidden, log_durations = model.encode(torch.tensor([ids]))
    frames = model.frames_of(log_durations[0], length_scale)
    _, post = model.decode(torch.repeat_interleave(hidden, frames, dim=1))
    return post[0]


ENGINE_DIM = AcousticConfig().dim  # the engines' tensors are laid out for the shipped width


def _engine_model(path: Path) -> FastSpeech:
    model = load_acoustic(path)
    if model.config.dim != ENGINE_DIM:
        raise WeightsError(
            f"{path}: the acoustic engines take models of width {ENGINE_DIM}, not {model.config.dim}"
        )
    return model


class EncoderPart(nn.Module):
    """Phoneme ids -> hidden states and predicted ``log(1 + frames)``, once per sentence."""

    def __init__(self, model: FastSpeech) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(ids)


class DecoderPart(nn.Module):
    """Hidden states repeated by their durations -> the final log-mel (after the postnet)."""

    def __init__(self, model: FastSpeech) -> None:
        super().__init__()
        self.model = model

    def forward(self, expanded: torch.Tensor) -> torch.Tensor:
        return self.model.decode(expanded)[1]


def _ids_or_hidden(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.generic]:
    if name == "ids":
        return np.asarray(rng.integers(1, 120, size=shapes[name], dtype=np.int64))
    return rng.standard_normal(shapes[name]).astype(np.float32)


def acoustic_specs(weights: WeightsSource | None = None) -> dict[str, EngineSpec]:
    """Our acoustic model as two engines: the encoder (per sentence; lengths differ, so unbatched)
    and the convolutional decoder (per chunk window; windows are one size, so sessions batch)."""
    source = weights or ACOUSTIC_WEIGHTS
    dim = ENGINE_DIM
    part = partial(EngineSpec, weights=source, sample_value=_ids_or_hidden)
    return by_name(
        part(
            name="acoustic-encoder",
            description="our acoustic model's encoder and duration predictor: Piper phoneme ids -> hidden",
            inputs=(TensorSpec("ids", "int64", ("batch", "phonemes")),),
            outputs=(
                TensorSpec("hidden", "float32", ("batch", "phonemes", dim)),
                TensorSpec("log_durations", "float32", ("batch", "phonemes")),
            ),
            axes={"batch": Dim(1, 1, 8), "phonemes": Dim(4, 120, 4096)},
            load=lambda p: EncoderPart(_engine_model(p)),
            batchable=False,
        ),
        part(
            name="acoustic-decoder",
            description="our acoustic model's decoder and postnet: expanded hidden -> log-mel (80, 22050 Hz)",
            inputs=(TensorSpec("expanded", "float32", ("batch", "frames", dim)),),
            outputs=(TensorSpec("mel", "float32", ("batch", 80, "frames")),),
            axes={"batch": Dim(1, 1, 8), "frames": Dim(8, 104, 2048)},
            load=lambda p: DecoderPart(_engine_model(p)),
            media_seconds=lambda inputs: inputs["expanded"].shape[1] * 256 / 22050,
        ),
    )


def frames_of(
    log_durations: npt.NDArray[np.float32], config: AcousticConfig, length_scale: float
) -> npt.NDArray[np.int64]:
    """Whole frames per phoneme from predicted log durations, as ``FastSpeech.frames_of`` computes them."""
    d = np.expm1(np.minimum(log_durations, config.max_log_duration)) * length_scale
    return np.maximum(np.round(d), 0).astype(np.int64)
