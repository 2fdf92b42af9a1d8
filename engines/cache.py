"""On-disk cache of built engines (TensorRT plans), keyed by everything that invalidates one.

The key is the ONNX file's hash, the TensorRT version, the GPU's name and
compute capability, and the precision. Each plan is stored with a metadata
file holding the full key and the plan's own SHA-256: an entry whose key
does not match, whose checksum fails, or that the runtime cannot
deserialize is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheKey:
    engine: str
    onnx_sha256: str
    builder_version: str
    gpu: str
    compute_capability: str
    precision: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class EngineCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        stem = f"{key.engine}-{key.precision}-{key.digest()[:20]}"
        return self.root / f"{stem}.plan", self.root / f"{stem}.json"

    def load(self, key: CacheKey) -> bytes | None:
        """The cached plan for ``key``, or ``None`` if absent, stale or corrupt."""
        plan_path, meta_path = self.paths(key)
        if not plan_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("engine cache: unreadable metadata %s; rebuilding", meta_path)
            return None
        if meta.get("key") != asdict(key):
            log.warning("engine cache: %s was built for another key; rebuilding", plan_path)
            return None
        data = plan_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("plan_sha256"):
            log.warning("engine cache: %s fails its checksum; rebuilding", plan_path)
            return None
        return data

    def store(self, key: CacheKey, plan: bytes) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        plan_path, meta_path = self.paths(key)
        _atomic_write(plan_path, plan)
        meta = {"key": asdict(key), "plan_sha256": hashlib.sha256(plan).hexdigest(), "bytes": len(plan)}
        _atomic_write(meta_path, json.dumps(meta, indent=2).encode())
        return plan_path

    def get_or_build(
        self, key: CacheKey, build: Callable[[], bytes], accept: Callable[[bytes], bool]
    ) -> tuple[bytes, bool]:
        """``(plan, built)``: the cached plan if ``accept`` takes it, else a fresh build (stored)."""
        cached = self.load(key)
        if cached is not None and accept(cached):
            return cached, False
        if cached is not None:
            log.warning("engine cache: %s did not deserialize; rebuilding", self.paths(key)[0])
        plan = build()
        self.store(key, plan)
        return plan, True
