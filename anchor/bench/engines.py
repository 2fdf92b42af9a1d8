"""``anchor engines bench``: one engine's latency and throughput per batch size."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from anchor.core.stats import summarize
from engines.engine import open_engine
from engines.settings import EngineSettings
from engines.spec import EngineSpec


def bench_engine(
    spec: EngineSpec,
    settings: EngineSettings,
    *,
    batches: list[int],
    backend: str | None = None,
    iterations: int = 20,
    warmup: int = 3,
    **sizes: int,
) -> dict[str, Any]:
    """Latency percentiles and throughput per batch size; warm-up runs excluded."""
    engine = open_engine(spec, settings, backend=backend)
    results = []
    try:
        for batch in batches:
            inputs = spec.sample_inputs("opt", **{spec.batch_axis: batch, **sizes})
            for _ in range(warmup):
                engine.run(inputs)
            times = []
            for _ in range(iterations):
                began = time.perf_counter()
                engine.run(inputs)
                if engine.backend.device == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - began) * 1000)
            stats = summarize(times)
            row: dict[str, Any] = {"batch": batch, "latency_ms": stats}
            row["items_per_s"] = round(batch * 1000 / float(np.median(times)), 2)
            if spec.media_seconds is not None:
                seconds = spec.media_seconds(inputs)
                row["media_seconds_per_item"] = round(seconds, 4)
                row["rtf"] = round(float(np.median(times)) / 1000 / (batch * seconds), 4)
            results.append(row)
    finally:
        engine.close()
    return {
        "bench": "engine",
        "engine": spec.name,
        "backend": engine.backend.name,
        "device": engine.backend.device,
        "precision": engine.backend.precision,
        "shape_sizes": sizes,
        "iterations": iterations,
        "warmup": warmup,
        "results": results,
        "torch": torch.__version__,
    }
