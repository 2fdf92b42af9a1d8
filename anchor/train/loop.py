"""What every trainer shares: a budget in steps and minutes, resumable checkpoints, a loss log and chart.

``out/<name>.pt`` holds the model, optimizer(s), step and config, written
atomically every ``save_every`` steps and at the end, so a run that is
stopped (or a lent GPU that goes back) resumes where it was saved.
``out/<name>.jsonl`` logs the losses; ``out/<name>.png`` draws them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Budget:
    steps: int
    minutes: float
    save_every: int = 500
    log_every: int = 50


@dataclass(frozen=True)
class TrainJob:
    """What every trainer is given: its data, where its run goes, for how long, on what, from which seed.

    ``batch`` and ``lr`` of None take the trainer's own defaults.
    """

    data: Path
    out: Path
    budget: Budget
    device: str = "auto"
    batch: int | None = None
    lr: float | None = None
    seed: int = 0

    def begin(self) -> tuple[torch.device, random.Random]:
        """Seed torch; the device asked for and a Python RNG seeded the same way."""
        torch.manual_seed(self.seed)
        return pick_device(self.device), random.Random(self.seed)

    def run(self, name: str) -> Run:
        return Run(self.out, name, self.budget)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


class Run:
    """One training run's files and clock under ``out`` (``name`` picks the file names)."""

    def __init__(self, out: Path, name: str, budget: Budget) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.name, self.budget = out, name, budget
        self.checkpoint = out / f"{name}.pt"
        self.log = out / f"{name}.jsonl"
        self.step = 0
        self._began = time.monotonic()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def resume(self, modules: Mapping[str, Any]) -> dict[str, Any]:
        """Load ``modules`` (models and optimizers by name) from the checkpoint if any; return its extras."""
        if not self.checkpoint.is_file():
            return {}
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(state[key])
        self.step = int(state["step"])
        extras: dict[str, Any] = state.get("extras", {})
        return extras

    def save(self, modules: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> None:
        state = {key: m.state_dict() for key, m in modules.items()}
        state["step"] = self.step
        state["extras"] = dict(extras or {})
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)

    def progress(self) -> float:
        """How much of the budget is spent, 0 to 1: steps or minutes, whichever runs out first."""
        elapsed = (time.monotonic() - self._began) / 60
        return min(1.0, max(self.step / self.budget.steps, elapsed / self.budget.minutes))

    def running(self) -> bool:
        return self.progress() < 1.0

    def record(self, losses: Mapping[str, float]) -> None:
        """Add one step's losses; every ``log_every`` steps their means go to the log."""
        self.step += 1
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1
        if self.step % self.budget.log_every == 0:
            self.flush()

    def flush(self) -> None:
        if not self._counts:
            return
        row = {"step": self.step, **{k: round(v / self._counts[k], 6) for k, v in self._sums.items()}}
        row["minutes"] = round((time.monotonic() - self._began) / 60, 2)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({"run": self.name, **row}), flush=True)
        self._sums, self._counts = {}, {}

    def due(self) -> bool:
        return self.step % self.budget.save_every == 0


def train(run: Run, modules: Mapping[str, Any], step: Callable[[], Mapping[str, float]]) -> None:
    """Call ``step`` until the budget is spent, saving on the way and at the end, then draw the chart."""
    while run.running():
        run.record(step())
        if run.due():
            run.save(modules)
    run.flush()
    run.save(modules)
    plot_log(run.log, run.out / f"{run.name}.png")


def plot_log(log: Path, png: Path) -> None:
    """One panel per logged loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return
    keys = [k for k in rows[-1] if k not in ("step", "minutes")]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, key in zip(axes[:, 0], keys, strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows])
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(log.stem)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
