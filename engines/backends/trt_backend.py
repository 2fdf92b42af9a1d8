"""The ``tensorrt`` backend: build a plan from the exported ONNX, cache it, run it.

Built with the TensorRT Python API: one optimization profile from the
engine's min/opt/max shapes, the FP16 flag when asked, a timing cache
persisted beside the plans. Runs with ``execute_async_v3`` on a CUDA stream,
torch tensors serving as the I/O buffers. Import of ``tensorrt`` happens
only here, so everything else works where it is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from engines.cache import CacheKey, EngineCache
from engines.spec import Arrays, EngineSpec
from engines.weights import sha256

log = logging.getLogger(__name__)


class EngineBuildError(RuntimeError):
    pass


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _trt() -> Any:
    import tensorrt  # optional dependency: imported only when used

    return tensorrt


def cache_key(spec: EngineSpec, onnx_path: Path, *, fp16: bool) -> CacheKey:
    major, minor = torch.cuda.get_device_capability()
    return CacheKey(
        engine=spec.name,
        onnx_sha256=sha256(onnx_path),
        builder_version=f"tensorrt-{_trt().__version__}",
        gpu=torch.cuda.get_device_name(),
        compute_capability=f"{major}.{minor}",
        precision="fp16" if fp16 else "fp32",
    )


def build_plan(
    spec: EngineSpec, onnx_path: Path, *, fp16: bool, workspace_mb: int, timing_cache: Path
) -> bytes:
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"{spec.name}: TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        profile.set_shape(t.name, spec.shape_of(t, "min"), spec.shape_of(t, "opt"), spec.shape_of(t, "max"))
    config.add_optimization_profile(profile)
    previous = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(previous)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT rejected the timing cache %s; starting a new one", timing_cache)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{spec.name}: TensorRT failed to build an engine from {onnx_path}")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = timing_cache.with_name(timing_cache.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    os.replace(tmp, timing_cache)
    return bytes(plan)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    if dtype not in table:
        raise EngineBuildError(f"TensorRT tensor type {dtype} has no torch equivalent here")
    return table[dtype]


class TensorRTBackend:
    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        spec: EngineSpec,
        onnx_path: Path,
        cache_dir: Path,
        *,
        fp16: bool = True,
        workspace_mb: int = 4096,
    ) -> None:
        if not tensorrt_available():
            raise RuntimeError("the tensorrt backend needs the tensorrt package and a CUDA GPU")
        trt = _trt()
        self.spec = spec
        self.precision = "fp16" if fp16 else "fp32"
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        key = cache_key(spec, onnx_path, fp16=fp16)
        cache = EngineCache(cache_dir)
        self.plan_path = cache.paths(key)[0]

        def build() -> bytes:
            return build_plan(
                spec,
                onnx_path,
                fp16=fp16,
                workspace_mb=workspace_mb,
                timing_cache=cache_dir / "timing.cache",
            )

        def accept(plan: bytes) -> bool:
            return self._runtime.deserialize_cuda_engine(plan) is not None

        plan, self.built = cache.get_or_build(key, build, accept)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineBuildError(f"{spec.name}: a freshly built TensorRT plan did not deserialize")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        trt, context = self._trt, self.context
        outputs: dict[str, torch.Tensor] = {}
        with torch.cuda.stream(self.stream):
            feeds = []
            for t in self.spec.inputs:
                dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(t.name))
                tensor = torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(
                    "cuda", dtype, non_blocking=True
                )
                feeds.append(tensor)  # kept alive until the stream is done
                context.set_input_shape(t.name, tuple(tensor.shape))
                context.set_tensor_address(t.name, tensor.data_ptr())
            for t in self.spec.outputs:
                shape = tuple(context.get_tensor_shape(t.name))
                dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(t.name))
                outputs[t.name] = torch.empty(shape, dtype=dtype, device="cuda")
                context.set_tensor_address(t.name, outputs[t.name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.spec.name}: TensorRT execution failed")
        self.stream.synchronize()
        return {
            name: (o.float() if o.is_floating_point() else o).cpu().numpy() for name, o in outputs.items()
        }

    def close(self) -> None:
        del self.context
        del self.engine
