"""The ``onnxruntime`` backend: CPU, or the CUDA execution provider where installed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from engines.spec import Arrays, EngineSpec


def cuda_provider_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, spec: EngineSpec, onnx_path: Path, *, device: str = "cpu", threads: int = 2) -> None:
        if device == "cuda" and not cuda_provider_available():
            raise RuntimeError(
                "onnxruntime was asked for CUDA but has no CUDAExecutionProvider "
                "(install the 'gpu' extra: onnxruntime-gpu)"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device == "cuda"
            else ["CPUExecutionProvider"]
        )
        self.spec = spec
        self.device = device
        self.precision = "fp32"
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self._outputs = [t.name for t in spec.outputs]

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        feeds = {t.name: np.ascontiguousarray(inputs[t.name]) for t in self.spec.inputs}
        results = self.session.run(self._outputs, feeds)
        return {name: np.asarray(r) for name, r in zip(self._outputs, results, strict=True)}

    def close(self) -> None:
        del self.session
