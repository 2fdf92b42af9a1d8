"""Our acoustic model's checkpoint: ``{'model': state_dict (fp16 when shipped), 'config': {...}, 'step'}``."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.models.fastspeech import AcousticConfig, FastSpeech
from engines.weights import WeightsError, WeightsSource, check_state_dict, read_checkpoint

ACOUSTIC_WEIGHTS = WeightsSource.project("acoustic.pt")


def load_acoustic(path: Path | str) -> FastSpeech:
    """A ready acoustic model (eval mode, float32) from a checkpoint ``anchor train acoustic`` wrote."""
    path = Path(path)
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
    model = FastSpeech(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in data["model"].items()}
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
