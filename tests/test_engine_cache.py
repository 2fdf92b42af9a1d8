from __future__ import annotations

import json
from pathlib import Path

from engines.cache import CacheKey, EngineCache

KEY = CacheKey("hifigan", "ab" * 32, "tensorrt-10.9.0", "NVIDIA H100 80GB HBM3", "9.0", "fp16")


class Builds:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> bytes:
        self.count += 1
        return f"plan-{self.count}".encode()


def test_a_valid_entry_is_loaded_without_building(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builds()
    assert cache.get_or_build(KEY, build, lambda _p: True) == (b"plan-1", True)
    assert cache.get_or_build(KEY, build, lambda _p: True) == (b"plan-1", False)
    assert build.count == 1


def test_a_corrupted_plan_is_rebuilt_never_loaded(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builds()
    cache.get_or_build(KEY, build, lambda _p: True)
    plan_path, _ = cache.paths(KEY)
    plan_path.write_bytes(b"plan-1 but flipped")
    assert cache.load(KEY) is None
    plan, built = cache.get_or_build(KEY, build, lambda _p: True)
    assert (plan, built, build.count) == (b"plan-2", True, 2)
    assert cache.load(KEY) == b"plan-2"


def test_an_entry_for_another_key_is_rebuilt(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builds()
    cache.get_or_build(KEY, build, lambda _p: True)
    _, meta_path = cache.paths(KEY)
    meta = json.loads(meta_path.read_text())
    meta["key"]["builder_version"] = "tensorrt-8.6.1"  # a plan from an older TensorRT
    meta_path.write_text(json.dumps(meta))
    assert cache.load(KEY) is None
    assert cache.get_or_build(KEY, build, lambda _p: True) == (b"plan-2", True)
    meta_path.write_text("{not json")
    assert cache.load(KEY) is None


def test_a_plan_the_runtime_rejects_is_rebuilt(tmp_path: Path) -> None:
    cache, build = EngineCache(tmp_path), Builds()
    cache.get_or_build(KEY, build, lambda _p: True)
    assert cache.get_or_build(KEY, build, lambda plan: plan != b"plan-1") == (b"plan-2", True)


def test_keys_differ_by_gpu_and_precision(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    other_gpu = CacheKey(*[*KEY.__dict__.values()][:3], "NVIDIA H200", "9.0", "fp16")
    fp32 = CacheKey(*[*KEY.__dict__.values()][:5], "fp32")
    assert len({cache.paths(k)[0] for k in (KEY, other_gpu, fp32)}) == 3
