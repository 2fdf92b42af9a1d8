"""ONNX export with dynamic axes, checked by ``onnx.checker`` (full check) before use."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engines.spec import EngineSpec
from engines.weights import sha256

OPSET = 18


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Exported:
    path: Path
    sha256: str
    opset: int
    seconds: float


def export_onnx(spec: EngineSpec, module: nn.Module, path: Path, *, opset: int = OPSET) -> Exported:
    """Export ``module`` to ``path`` (written atomically), then run the full ONNX check."""
    if opset < 17:
        raise ExportError(f"opset {opset} is below 17, the lowest the engines support")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.float().cpu().eval()
    batch = min(2, spec.axes[spec.batch_axis].max)  # a batch of 1 would be specialised away
    sample = spec.sample_inputs("opt", **{spec.batch_axis: batch})
    args = tuple(torch.from_numpy(sample[t.name]) for t in spec.inputs)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    began = time.perf_counter()
    names: dict[str, Any] = {
        "input_names": [t.name for t in spec.inputs],
        "output_names": [t.name for t in spec.outputs],
    }
    try:
        if spec.exporter == "dynamo":
            # torch.export reasons about sizes >= 1; an axis that may be empty (a first, empty
            # kv-cache) stays symbolic in the ONNX graph all the same.
            dims = {a: torch.export.Dim(a, min=max(1, d.min), max=d.max) for a, d in spec.axes.items()}
            shapes = tuple(
                {i: dims[a] for i, a in enumerate(t.shape) if isinstance(a, str)} for t in spec.inputs
            )
            how: dict[str, Any] = {"dynamo": True, "dynamic_shapes": shapes, "external_data": False}
        else:
            axes = {
                t.name: {i: a for i, a in enumerate(t.shape) if isinstance(a, str)}
                for t in (*spec.inputs, *spec.outputs)
            }
            how = {"dynamo": False, "dynamic_axes": axes}
        torch.onnx.export(module, args, str(tmp), opset_version=opset, verbose=False, **how, **names)
        onnx.checker.check_model(str(tmp), full_check=True)
        model = onnx.load(str(tmp), load_external_data=False)
        found = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
        if found != {opset}:
            raise ExportError(f"{spec.name}: exported opset {sorted(found)}, expected {opset}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return Exported(path, sha256(path), opset, time.perf_counter() - began)
