"""What ``anchor engines list|build`` do, as plain functions returning JSON-ready dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.backends.trt_backend import tensorrt_available
from engines.engine import backend_memo, cuda_device, ensure_onnx, tensorrt_backend, weights_info
from engines.errors import WeightsError
from engines.settings import EngineSettings
from engines.spec import EngineSpec, Which, relative_error

_PARITY_CASES: tuple[tuple[Which, int], ...] = (("min", 1), ("opt", 1), ("opt", 3))


def _parity(
    spec: EngineSpec, weights: Path, candidate: OrtBackend, settings: EngineSettings
) -> dict[str, Any]:
    reference = TorchBackend(spec, spec.module(weights), threads=settings.cpu_threads)
    errors = {}
    for which, batch in _PARITY_CASES:
        inputs = spec.sample_inputs(which, seed=7, **{spec.batch_axis: batch})
        ref, out = reference.run(inputs), candidate.run(inputs)
        errors[f"{which}/batch{batch}"] = max(relative_error(out[k], ref[k]) for k in ref)
    worst = max(errors.values())
    return {"relative_error": errors, "tolerance": spec.rtol_fp32, "ok": worst <= spec.rtol_fp32}


def list_engines(specs: dict[str, EngineSpec], settings: EngineSettings) -> list[dict[str, Any]]:
    memo = backend_memo(settings)
    device = cuda_device(settings)
    rows = []
    for name, spec in specs.items():
        backend = settings.backends.get(name, settings.backend)
        row: dict[str, Any] = {
            "engine": name,
            "description": spec.description,
            "backend": backend,
            "device": device,
            "precision": "fp16" if settings.fp16 and device == "cuda" else "fp32",
            "weights": spec.weights.describe(),
        }
        try:
            info = weights_info(spec)
            row.update(weights_path=str(info.path), weights_sha256=info.sha256, status="ready")
            chosen = [v["backend"] for k, v in memo.items() if k.startswith(f"{name}:{info.sha256[:16]}:")]
            if backend == "auto" and spec.prebuilt_onnx:
                row["backend"] = "auto -> onnxruntime (published as ONNX)"
            elif backend == "auto":
                row["backend"] = f"auto -> {chosen[-1]}" if chosen else "auto (measured on first use)"
        except WeightsError as exc:
            row.update(status="missing weights", error=str(exc))
        rows.append(row)
    return rows


def build_engines(specs: dict[str, EngineSpec], settings: EngineSettings) -> list[dict[str, Any]]:
    """Export and check every ONNX graph, prove onnxruntime parity, build TensorRT where possible."""
    report = []
    for name, spec in specs.items():
        row: dict[str, Any] = {"engine": name}
        try:
            weights = weights_info(spec)
        except WeightsError as exc:
            report.append({**row, "status": "missing weights", "error": str(exc)})
            continue
        try:
            exported = ensure_onnx(spec, settings, weights)
        except WeightsError as exc:  # weights that lack this part (a WaveGlow without a pitch head)
            report.append({**row, "status": "not in these weights", "error": str(exc)})
            continue
        row["onnx"] = {"path": str(exported.path), "sha256": exported.sha256, "opset": exported.opset}
        candidate = OrtBackend(spec, exported.path, threads=settings.cpu_threads)
        if spec.prebuilt_onnx:
            onnx.checker.check_model(str(exported.path), full_check=True)
            out = candidate.run(spec.sample_inputs("opt"))
            finite = all(bool(np.isfinite(v).all()) for v in out.values())
            row["onnxruntime_parity"] = {
                "reference": "none (published as ONNX; checked and run)",
                "ok": finite,
            }
        else:
            row["onnxruntime_parity"] = _parity(spec, weights.path, candidate, settings)
        candidate.close()
        if tensorrt_available():
            trt = tensorrt_backend(spec, exported.path, settings)
            row["tensorrt"] = {"plan": str(trt.plan_path), "built": trt.built, "precision": trt.precision}
            trt.close()
        else:
            row["tensorrt"] = {"skipped": "tensorrt is not importable or no CUDA GPU is visible"}
        row["status"] = "ok" if row["onnxruntime_parity"]["ok"] else "parity failed"
        report.append(row)
    return report
