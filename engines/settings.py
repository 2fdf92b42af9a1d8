"""Engine-layer settings (embedded in the anchor's typed configuration)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BackendName = Literal["auto", "torch", "onnxruntime", "tensorrt"]


def _default_cache() -> Path:
    return Path.home() / ".cache" / "virtual-anchor" / "engines"


class EngineSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendName = Field("auto", description="Backend for every engine unless overridden.")
    backends: dict[str, BackendName] = Field(
        default_factory=dict, description="Per-engine backend, e.g. {hifigan = 'onnxruntime'}."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    fp16: bool = Field(True, description="Half precision on CUDA (ignored on CPU).")
    cuda_graphs: bool = Field(True, description="Capture CUDA graphs for repeated fixed shapes (torch).")
    cpu_threads: int = Field(
        default_factory=lambda: max(1, min(2, (os.cpu_count() or 2) // 2)),
        ge=1,
        le=256,
        description=(
            "Intra-op threads for CPU inference. Calls of several sessions and engines run at once, so "
            "the default is half the cores, at most 2: on 2 cores, two threads per call oversubscribe "
            "them and the voice underruns (two face GAN sessions: 141 gaps in 3 minutes, none with one)."
        ),
    )
    cache_dir: Path = Field(default_factory=_default_cache, description="ONNX files, TensorRT plans.")
    weights: dict[str, Path] = Field(
        default_factory=dict, description="Per-engine checkpoint path overriding the default source."
    )
    max_batch: int = Field(16, ge=1, le=1024, description="Largest micro-batch the hub forms.")
    max_wait_ms: float = Field(
        4.0, ge=0, le=1000, description="Longest a request waits for others to batch with."
    )
    max_pending: int = Field(1024, ge=1, description="Requests queued per engine before callers wait.")
    trt_workspace_mb: int = Field(4096, ge=64, description="TensorRT builder workspace limit.")
