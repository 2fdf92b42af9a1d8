"""What an engine is: named, typed tensors with dynamic axes, a module and its weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from torch import nn

from engines.weights import WeightsSource

Which = Literal["min", "opt", "max"]
Arrays = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class Dim:
    """A dynamic axis: the smallest, the most common and the largest size."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.opt <= self.max or self.opt < 1:
            raise ValueError(f"dynamic axis needs 0 <= min <= opt <= max and opt >= 1, got {self}")


@dataclass(frozen=True)
class TensorSpec:
    """``shape`` holds ints for fixed axes and axis names for dynamic ones."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class EngineSpec:
    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: Mapping[str, Dim]
    weights: WeightsSource
    #: The PyTorch module with its weights; ``None`` for a model published only as ONNX.
    load: Callable[[Path], nn.Module] | None = None
    #: Axis every batched input and output shares as dimension 0; the hub batches along it.
    batch_axis: str = "batch"
    #: False when some input has no batch axis (the hub then runs requests one by one).
    batchable: bool = True
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    #: Largest ``max|a - ref| / max|ref|`` accepted between backends.
    rtol_fp32: float = 1e-4
    rtol_fp16: float = 1e-2
    #: Draws sample input values of a shape (benchmarks, parity checks, warm-up).
    sample_value: Callable[
        [np.random.Generator, str, dict[str, tuple[int, ...]]], npt.NDArray[np.generic]
    ] = field(default=lambda rng, name, shapes: rng.standard_normal(shapes[name], dtype=np.float32))

    #: Seconds of media one batch item of these inputs stands for (for real-time factors).
    media_seconds: Callable[[Arrays], float] | None = None
    #: For a model published as ONNX: an edit of its graph (named, for the cache) before it is run,
    #: such as exposing an inner tensor as an output. The edited graph is checked and cached.
    onnx_edit: tuple[str, Callable[[onnx.ModelProto], None]] | None = None
    #: Names the module's graph for the export cache: change it when the code builds another graph
    #: from the same weights (a fold, a new output), so cached ONNX files of the old one are not used.
    revision: str = ""

    def __post_init__(self) -> None:
        for t in (*self.inputs, *self.outputs):
            for axis in t.shape:
                if isinstance(axis, str) and axis not in self.axes:
                    raise ValueError(f"engine {self.name}: tensor {t.name} uses undeclared axis {axis!r}")

    @property
    def prebuilt_onnx(self) -> bool:
        """The weights file *is* the ONNX graph (no PyTorch module to export from)."""
        return self.load is None

    def module(self, path: Path) -> nn.Module:
        if self.load is None:
            raise ValueError(f"engine {self.name} is published as ONNX only; it has no PyTorch module")
        return self.load(path)

    def shape_of(self, tensor: TensorSpec, which: Which = "opt", **sizes: int) -> tuple[int, ...]:
        """A concrete shape: named axes from ``sizes``, else the axis's ``which`` size."""
        return tuple(
            a if isinstance(a, int) else sizes.get(a, getattr(self.axes[a], which)) for a in tensor.shape
        )

    def sample_inputs(self, which: Which = "opt", *, seed: int = 0, **sizes: int) -> Arrays:
        rng = np.random.default_rng(seed)
        shapes = {t.name: self.shape_of(t, which, **sizes) for t in self.inputs}
        return {t.name: self.sample_value(rng, t.name, shapes) for t in self.inputs}

    def check_inputs(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> None:
        """Raise ``ValueError`` naming the tensor, axis and allowed range for bad input."""
        names = [t.name for t in self.inputs]
        if sorted(inputs) != sorted(names):
            raise ValueError(f"engine {self.name} takes inputs {names}, got {sorted(inputs)}")
        for t in self.inputs:
            array = inputs[t.name]
            if array.dtype != np.dtype(t.dtype):
                raise ValueError(f"engine {self.name}: {t.name} must be {t.dtype}, got {array.dtype}")
            if array.ndim != len(t.shape):
                raise ValueError(
                    f"engine {self.name}: {t.name} must have {len(t.shape)} dims {t.shape}, got {array.shape}"
                )
            for i, (axis, size) in enumerate(zip(t.shape, array.shape, strict=True)):
                if isinstance(axis, int) and size != axis:
                    raise ValueError(f"engine {self.name}: {t.name} dim {i} must be {axis}, got {size}")
                if isinstance(axis, str):
                    dim = self.axes[axis]
                    if not dim.min <= size <= dim.max:
                        raise ValueError(
                            f"engine {self.name}: {t.name} axis {axis!r} must be in "
                            f"[{dim.min}, {dim.max}], got {size}"
                        )


def by_name(*specs: EngineSpec) -> dict[str, EngineSpec]:
    """``specs`` keyed by their names (the parts of one model, built with shared axes and weights)."""
    return {spec.name: spec for spec in specs}


def relative_error(value: npt.NDArray[np.generic], reference: npt.NDArray[np.generic]) -> float:
    """``max|value - reference| / max|reference|`` (the parity measure every test uses)."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.abs(np.asarray(value, dtype=np.float64) - ref).max(initial=0.0)
    return float(diff / max(np.abs(ref).max(initial=0.0), 1e-12))
