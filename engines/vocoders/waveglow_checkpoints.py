"""Loading WaveGlow from the checkpoints people actually have, without converting them.

- NVIDIA's ``waveglow_256channels_universal_v5.pt``: ``{'model': <whole module>, ...}``
  pickled from a module named ``glow`` (classes ``WaveGlow``, ``WN``,
  ``Invertible1x1Conv``), legacy weight norm, one fused ``cond_layer`` per WN.
  Unpickling it runs code from the file: it is only done for a file the user
  chose, with a warning.
- DeepLearningExamples / NGC: ``{'state_dict': {'module.…'}, 'config': {...}}`` with
  one ``cond_layers.i`` per WN layer (merged here into the fused layer).
- A bare state dict of either layout.

Any channel, layer or flow counts work: they are read off the tensor shapes
(and checked against ``config`` when there is one).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.errors import WeightsError
from engines.models.waveglow import WaveGlow, WaveGlowConfig
from engines.spec import Dim, EngineSpec, TensorSpec
from engines.weights import (
    StateDict,
    WeightsSource,
    check_state_dict,
    fold_weight_norm,
    read_checkpoint_or_module,
    strip_prefix,
)


def _read(path: Path) -> Any:
    return read_checkpoint_or_module(path, "WaveGlow", {"glow": ("WaveGlow", "WN", "Invertible1x1Conv")})


def _state_and_config(data: Any, path: Path) -> tuple[StateDict, dict[str, Any] | None]:
    if isinstance(data, nn.Module):
        return dict(data.state_dict()), None
    if not isinstance(data, dict):
        raise WeightsError(f"WaveGlow checkpoint {path} holds a {type(data).__name__}, not a model or a dict")
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    for key in ("model", "state_dict"):
        if key in data:
            inner = data[key]
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict()), config
            if isinstance(inner, dict):
                return dict(inner), config
    if any(k.endswith("upsample.weight") for k in data):
        return dict(data), config
    raise WeightsError(
        f"WaveGlow checkpoint {path} has no 'model' or 'state_dict' (keys: {sorted(data)[:8]})"
    )


def _merge_cond_layers(state: StateDict) -> StateDict:
    """DLE splits each WN's ``cond_layer`` into ``cond_layers.i``; join them (dim 0, in order)."""
    out: StateDict = {}
    split: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        m = re.fullmatch(r"(WN\.\d+)\.cond_layers\.(\d+)\.(weight|bias)", key)
        if m:
            split.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = value
        else:
            out[key] = value
    for wn, layers in split.items():
        order = sorted(layers)
        if order != list(range(len(order))):
            raise WeightsError(f"{wn}.cond_layers has gaps: {order}")
        for part in ("weight", "bias"):
            out[f"{wn}.cond_layer.{part}"] = torch.cat([layers[i][part] for i in order], 0)
    return out


def _infer_config(state: StateDict) -> WaveGlowConfig:
    try:
        n_mel = state["upsample.weight"].shape[0]
        kernel = state["upsample.weight"].shape[2]
        flows = sorted({int(k.split(".")[1]) for k in state if k.startswith("WN.")})
        halves = [state[f"WN.{k}.start.weight"].shape[1] for k in flows]
        layers = len({k.split(".")[3] for k in state if k.startswith("WN.0.in_layers.")})
        in_w = state["WN.0.in_layers.0.weight"]
    except KeyError as exc:
        raise WeightsError(f"not a WaveGlow state dict: missing {exc}") from None
    early_every = next((k for k in range(1, len(halves)) if halves[k] < halves[k - 1]), len(halves))
    early_size = 2 * (halves[0] - halves[early_every]) if early_every < len(halves) else 2
    n_group = 2 * halves[0]
    return WaveGlowConfig(
        n_mel_channels=n_mel,
        n_flows=len(flows),
        n_group=n_group,
        n_early_every=early_every,
        n_early_size=early_size,
        n_layers=layers,
        n_channels=in_w.shape[0] // 2,
        kernel_size=in_w.shape[2],
        upsample_kernel=kernel,
    )


def _check_config(found: WaveGlowConfig, declared: dict[str, Any], path: Path) -> None:
    wn = declared.get("WN_config", {}) if isinstance(declared.get("WN_config"), dict) else {}
    wanted = {**{k: v for k, v in declared.items() if k != "WN_config"}, **wn}
    mismatched = [
        f"{k}: config says {wanted[k]}, weights have {getattr(found, k)}"
        for k in (
            "n_mel_channels",
            "n_flows",
            "n_group",
            "n_early_every",
            "n_early_size",
            "n_layers",
            "n_channels",
            "kernel_size",
        )
        if k in wanted and wanted[k] != getattr(found, k)
    ]
    if mismatched:
        raise WeightsError(
            f"WaveGlow checkpoint {path}: config and weights disagree: " + "; ".join(mismatched)
        )


#: Fold the upsampler into the conditioning layers (``WaveGlow.fold_conditioning``) up to this many
#: folded floats (128 MB). Ours (21 M) runs 1.7x faster folded; NVIDIA's 256-channel model would
#: need 503 M (2 GB) and its folded conditioning ran slower here (1.2 s -> 2.0 s for 64 frames).
FOLD_LIMIT = 32_000_000

PUBLISHED_SIGMA = 0.6  # what NVIDIA samples its published WaveGlow models at


def _declared_config(path: Path | str) -> dict[str, Any]:
    """A checkpoint's ``config``, read tensors-only: a file that pickles a whole module (NVIDIA's
    own) declares none, and a file that cannot be read at all is reported by ``load_waveglow``."""
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError):
        return {}
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else {}


def declared_sigma(path: Path | str) -> float:
    """The noise scale a checkpoint is meant to be sampled at: its ``config['sigma']`` (our trainer
    writes the sigma it trained samples at), else the published models' 0.6."""
    sigma = _declared_config(path).get("sigma")
    if sigma is None:
        return PUBLISHED_SIGMA
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 <= sigma <= 4:
        raise WeightsError(f"WaveGlow checkpoint {path}: config sigma must be a number 0..4, got {sigma!r}")
    return float(sigma)


def declares_source(path: Path | str) -> bool:
    """Does this checkpoint carry a source (a pitch head: ``config['source'] == 'pitch'``)?"""
    return _declared_config(path).get("source") == "pitch"


def load_waveglow(path: Path | str) -> WaveGlow:
    """A ready WaveGlow (eval mode, weight norm removed, conditioning folded when small enough) from
    either public checkpoint format, or ours (which may carry a source: a pitch head)."""
    path = Path(path)
    state, declared = _state_and_config(_read(path), path)
    state = _merge_cond_layers(fold_weight_norm(strip_prefix(state, "module.")))
    config = _infer_config(state)
    if declared is not None:
        _check_config(config, declared, path)
    model = WaveGlow(config, source=any(k.startswith("pitch.") for k in state))
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=False)  # w_inverse buffers are derived, not stored
    model.refresh_inverses()
    if model.folded_size() <= FOLD_LIMIT:
        model.fold_conditioning()
    return model.eval()


class Denoiser(nn.Module):
    """Removes WaveGlow's constant hiss: subtract the spectrum it makes for a silent mel."""

    window: torch.Tensor
    bias: torch.Tensor

    def __init__(self, waveglow: WaveGlow, *, n_fft: int = 1024, hop: int = 256, frames: int = 88) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        silent = torch.zeros(1, waveglow.config.n_mel_channels, frames)
        bias_audio = waveglow.infer(silent, sigma=0.0)
        self.register_buffer("bias", self._stft(bias_audio).abs()[:, :, :1])

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.stft(audio, self.n_fft, self.hop, window=self.window, return_complex=True)

    @torch.inference_mode()
    def forward(self, audio: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
        spec = self._stft(audio)
        magnitude = torch.clamp(spec.abs() - self.bias * strength, min=0.0)
        cleaned = torch.polar(magnitude, torch.angle(spec))
        return torch.istft(cleaned, self.n_fft, self.hop, window=self.window, length=audio.shape[-1])


def _mel_and_noise(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.float32]:
    batch, _, frames = shapes["mel"]
    if name == "z":
        return np.zeros((batch, 8, frames * 32), dtype=np.float32)  # sigma 0: deterministic
    return (rng.standard_normal(shapes["mel"]) * 2.0 - 5.0).astype(np.float32)


def waveglow_spec(weights: WeightsSource | None = None) -> EngineSpec:
    return EngineSpec(
        name="waveglow",
        description="WaveGlow vocoder (NVIDIA or DLE/NGC checkpoint): log-mel (80, 22050 Hz) -> audio",
        inputs=(
            TensorSpec("mel", "float32", ("batch", 80, "frames")),
            TensorSpec("z", "float32", ("batch", 8, "groups")),
        ),
        outputs=(TensorSpec("audio", "float32", ("batch", "samples")),),
        axes={
            "batch": Dim(1, 1, 8),
            "frames": Dim(8, 64, 1024),
            "groups": Dim(256, 2048, 32768),
            "samples": Dim(2048, 16384, 262144),
        },
        weights=weights or WeightsSource.project("waveglow.pt"),
        load=load_waveglow,
        revision="folded",
        sample_value=_mel_and_noise,
        media_seconds=lambda inputs: inputs["mel"].shape[2] * 256 / 22050,
    )


class PitchOf(nn.Module):
    """The pitch head of a WaveGlow with a source, as an engine: mel -> F0 (Hz) and voicing."""

    def __init__(self, waveglow: WaveGlow) -> None:
        super().__init__()
        if waveglow.pitch is None:
            raise WeightsError("this WaveGlow has no source (no pitch head in its checkpoint)")
        self.pitch = waveglow.pitch

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pitch.f0(mel)


def load_waveglow_pitch(path: Path | str) -> PitchOf:
    return PitchOf(load_waveglow(path))


def waveglow_pitch_spec(weights: WeightsSource | None = None) -> EngineSpec:
    """The pitch head inside our WaveGlow weights: the vocoder stage builds the excitation (z) from it."""
    return EngineSpec(
        name="waveglow-pitch",
        description="F0 and voicing per mel frame (the pitch head of a WaveGlow with a source)",
        inputs=(TensorSpec("mel", "float32", ("batch", 80, "frames")),),
        outputs=(
            TensorSpec("f0", "float32", ("batch", "frames")),
            TensorSpec("voiced", "float32", ("batch", "frames")),
        ),
        axes={"batch": Dim(1, 1, 8), "frames": Dim(8, 64, 1024)},
        weights=weights or WeightsSource.project("waveglow.pt"),
        load=load_waveglow_pitch,
        sample_value=_mel_and_noise,
        media_seconds=lambda inputs: inputs["mel"].shape[2] * 256 / 22050,
    )
