"""Trained runs -> the weights that ship in ``engines/weights`` (fp16; public layouts where there is one)."""

from __future__ import annotations

from pathlib import Path

import torch

from engines.weights import project_weights_dir

SHIPPED = {
    "acoustic": "acoustic.pt",
    "waveglow": "waveglow.pt",
    "mouth": "mouth_gan.pt",
}
LIMIT_BYTES = 20 * 1024 * 1024


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def export_weights(runs: Path, to: Path | None = None) -> dict[str, Path]:
    """Every finished run under ``runs`` as its shipped file; refuses a file over 20 MB."""
    to = to or project_weights_dir()
    to.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for run, name in SHIPPED.items():
        source = runs / f"{run}-final.pt"
        if not source.is_file():
            continue
        data = torch.load(source, map_location="cpu", weights_only=False)
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data[key] = _half(data[key])
        target = to / name
        torch.save(data, target)
        size = target.stat().st_size
        if size > LIMIT_BYTES:
            target.unlink()
            raise ValueError(f"{name} would be {size / 2**20:.1f} MB in fp16, over the 20 MB limit")
        written[run] = target
    return written
