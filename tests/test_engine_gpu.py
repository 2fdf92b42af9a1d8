"""CUDA and TensorRT paths: run where a GPU (and TensorRT) exist, skip cleanly elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.backends.torch_backend import TorchBackend
from engines.backends.trt_backend import TensorRTBackend, tensorrt_available
from engines.engine import ensure_onnx, weights_info
from engines.registry import hifigan_spec
from engines.settings import EngineSettings
from engines.spec import relative_error

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
trt = pytest.mark.skipif(not tensorrt_available(), reason="needs tensorrt and a CUDA GPU")


@cuda
@pytest.mark.gpu
def test_cuda_fp16_and_graphs_match_cpu_fp32() -> None:
    spec = hifigan_spec()
    path = spec.weights.resolve()
    reference = TorchBackend(spec, spec.module(path))
    gpu = TorchBackend(spec, spec.module(path), device="cuda", fp16=True, cuda_graphs=True)
    inputs = spec.sample_inputs("opt", batch=4)
    expected = reference.run(inputs)["audio"]
    for _ in range(3):  # the second call captures a graph, the third replays it
        got = gpu.run(inputs)["audio"]
        assert relative_error(got, expected) <= spec.rtol_fp16
    assert len(gpu._graphs) == 1


@trt
@pytest.mark.gpu
def test_tensorrt_engine_matches_torch_and_is_cached(tmp_path: Path) -> None:
    spec = hifigan_spec()
    path = spec.weights.resolve()
    settings = EngineSettings(cache_dir=tmp_path)
    exported = ensure_onnx(spec, settings, weights_info(spec))
    first = TensorRTBackend(spec, exported.path, tmp_path / "trt", fp16=True)
    inputs = spec.sample_inputs("opt", batch=2)
    expected = TorchBackend(spec, spec.module(path)).run(inputs)["audio"]
    assert relative_error(first.run(inputs)["audio"], expected) <= spec.rtol_fp16
    again = TensorRTBackend(spec, exported.path, tmp_path / "trt", fp16=True)
    assert first.built and not again.built
    assert (tmp_path / "trt" / "timing.cache").is_file()
