"""Opening an engine: weights -> module -> backend (chosen, exported and built as needed)."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch

from engines.backends import Backend
from engines.backends.ort_backend import OrtBackend, cuda_provider_available
from engines.backends.torch_backend import TorchBackend
from engines.backends.trt_backend import TensorRTBackend, tensorrt_available
from engines.errors import WeightsError
from engines.export import OPSET, Exported, export_onnx
from engines.settings import EngineSettings
from engines.spec import Arrays, EngineSpec
from engines.weights import sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsInfo:
    source: str
    path: Path
    sha256: str


@dataclass
class Engine:
    """A loaded engine on one backend. ``run`` blocks: call it off the event loop."""

    spec: EngineSpec
    backend: Backend
    weights: WeightsInfo
    onnx: Exported | None = None

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        self.spec.check_inputs(inputs)
        return self.backend.run(inputs)

    def close(self) -> None:
        self.backend.close()


def weights_info(spec: EngineSpec) -> WeightsInfo:
    """The engine's checkpoint on disk with its SHA-256 (``WeightsError`` if absent)."""
    path = spec.weights.resolve()
    digest = sha256(path)
    expected = spec.weights.expected_sha256
    if expected is not None and digest != expected:
        raise WeightsError(
            f"checkpoint {path} has SHA-256 {digest}, expected {expected}: "
            "the file is damaged or not the published weights"
        )
    return WeightsInfo(spec.weights.describe(), path, digest)


def tensorrt_backend(spec: EngineSpec, onnx_path: Path, settings: EngineSettings) -> TensorRTBackend:
    return TensorRTBackend(
        spec,
        onnx_path,
        settings.cache_dir / "tensorrt",
        fp16=settings.fp16,
        workspace_mb=settings.trt_workspace_mb,
    )


def cuda_device(settings: EngineSettings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def onnx_file(spec: EngineSpec, settings: EngineSettings, weights_sha: str) -> Path:
    tag = f"{spec.exporter}-torch{torch.__version__.split('+')[0]}-opset{OPSET}"
    if spec.revision:
        tag += f"-{spec.revision}"
    return settings.cache_dir / "onnx" / f"{spec.name}-{weights_sha[:16]}-{tag}.onnx"


def ensure_onnx(spec: EngineSpec, settings: EngineSettings, weights: WeightsInfo) -> Exported:
    """The engine's ONNX file, exported (and fully checked) on first use."""
    if spec.prebuilt_onnx:
        model = onnx.load(str(weights.path), load_external_data=False)
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if spec.onnx_edit is None:
            return Exported(weights.path, weights.sha256, opset, 0.0)
        tag, edit = spec.onnx_edit
        path = settings.cache_dir / "onnx" / f"{spec.name}-{weights.sha256[:16]}-{tag}.onnx"
        if not path.is_file():
            edit(model)
            onnx.checker.check_model(model)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            onnx.save(model, str(tmp))
            tmp.replace(path)
        return Exported(path, sha256(path), opset, 0.0)
    path = onnx_file(spec, settings, weights.sha256)
    if path.is_file():
        return Exported(path, sha256(path), OPSET, 0.0)
    return export_onnx(spec, spec.module(weights.path), path)


def _median_ms(backend: Backend, spec: EngineSpec, runs: int = 5) -> float:
    inputs = spec.sample_inputs("opt")
    backend.run(inputs)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        backend.run(inputs)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def backend_memo(settings: EngineSettings) -> dict[str, dict[str, object]]:
    """Remembered CPU backend choices (an unreadable memo counts as empty, and is rewritten)."""
    memo = settings.cache_dir / "backend-choice.json"
    if not memo.is_file():
        return {}
    try:
        known = json.loads(memo.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("ignoring unreadable backend memo %s", memo)
        return {}
    return known if isinstance(known, dict) else {}


def choose_cpu_backend(spec: EngineSpec, settings: EngineSettings, weights: WeightsInfo) -> str:
    """The faster of torch and onnxruntime on this CPU for this model, measured once and remembered."""
    memo = settings.cache_dir / "backend-choice.json"
    key = (
        f"{spec.name}:{weights.sha256[:16]}:cpus{os.cpu_count()}:threads{settings.cpu_threads}:"
        f"torch{torch.__version__}:ort{ort.__version__}"
    )
    known = backend_memo(settings)
    if key in known:
        return str(known[key]["backend"])
    module = spec.module(weights.path)
    timings = {"torch": _median_ms(TorchBackend(spec, module, threads=settings.cpu_threads), spec, runs=5)}
    ort_backend = OrtBackend(spec, ensure_onnx(spec, settings, weights).path, threads=settings.cpu_threads)
    timings["onnxruntime"] = _median_ms(ort_backend, spec)
    ort_backend.close()
    choice = min(timings, key=lambda name: timings[name])
    known[key] = {"backend": choice, "median_ms": timings}
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps(known, indent=2))
    log.info("engine %s: chose %s on CPU (%s)", spec.name, choice, timings)
    return choice


def backend_name(spec: EngineSpec, settings: EngineSettings, weights: WeightsInfo) -> str:
    wanted = settings.backends.get(spec.name, settings.backend)
    if wanted != "auto":
        return wanted
    if tensorrt_available() and settings.device != "cpu":
        return "tensorrt"
    if spec.prebuilt_onnx:
        return "onnxruntime"
    if cuda_device(settings) == "cuda":
        return "torch"
    return choose_cpu_backend(spec, settings, weights)


def open_engine(spec: EngineSpec, settings: EngineSettings, *, backend: str | None = None) -> Engine:
    """Resolve weights, load them, and start the engine on its backend (blocking)."""
    weights = weights_info(spec)
    path = weights.path
    name = backend or backend_name(spec, settings, weights)
    device = cuda_device(settings)
    if name == "torch":
        module = spec.module(path)
        runner: Backend = TorchBackend(
            spec,
            module,
            device=device,
            fp16=settings.fp16,
            cuda_graphs=settings.cuda_graphs,
            threads=settings.cpu_threads,
        )
        return Engine(spec, runner, weights)
    exported = ensure_onnx(spec, settings, weights)
    if name == "onnxruntime":
        ort_device = "cuda" if device == "cuda" and cuda_provider_available() else "cpu"
        runner = OrtBackend(spec, exported.path, device=ort_device, threads=settings.cpu_threads)
    elif name == "tensorrt":
        runner = tensorrt_backend(spec, exported.path, settings)
    else:
        raise ValueError(f"unknown backend {name!r}; choose torch, onnxruntime, tensorrt or auto")
    return Engine(spec, runner, weights, exported)
