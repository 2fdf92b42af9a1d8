"""A contact sheet of a rendered talk: mouth crops over time above the audio envelope, for a glance.

Rows of crops around the mouth, one every ``step`` frames with its time
under it, and below them the audio's loudness over the same time with each
shown frame marked: a mouth that opens on the loud parts and shuts in the
pauses reads at once, and so does one that lags or never closes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from anchor.face.portrait import Image, Portrait

COLUMNS = 12


def mouth_box(portrait: Portrait) -> tuple[int, int, int, int]:
    """(x, y, w, h) around the mouth and chin, the same for every frame of the portrait."""
    m = portrait.mouth
    hw = m.half_width
    x0, x1 = int(m.cx - 2.0 * hw), int(m.cx + 2.0 * hw)
    y0, y1 = int(m.y - 1.4 * hw), int(m.y + 2.6 * hw)
    h, w = portrait.image.shape[:2]
    x0, y0 = max(0, x0), max(0, y0)
    return x0, y0, min(w, x1) - x0, min(h, y1) - y0


def mouth_crop(frame: Image, box: tuple[int, int, int, int]) -> Image:
    x, y, w, h = box
    return np.ascontiguousarray(frame[y : y + h, x : x + w])


def write_contact_sheet(
    out: Path,
    crops: list[Image],
    audio: npt.NDArray[np.float32],
    rate: int,
    fps: int,
    *,
    title: str = "",
    cells: int = 48,
) -> Path:
    """``crops`` (one per video frame, in order) and ``audio`` (mono) into a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not crops:
        raise ValueError("a contact sheet needs at least one frame")
    step = max(1, int(np.ceil(len(crops) / cells)))
    shown = list(range(0, len(crops), step))
    rows = int(np.ceil(len(shown) / COLUMNS))
    fig = plt.figure(figsize=(COLUMNS * 1.1, rows * 1.25 + 1.8))
    grid = fig.add_gridspec(rows + 1, COLUMNS, height_ratios=[1.0] * rows + [1.3])
    for k, index in enumerate(shown):
        ax = fig.add_subplot(grid[k // COLUMNS, k % COLUMNS])
        ax.imshow(crops[index])
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{index / fps:.2f} s", fontsize=7, labelpad=1)
    ax = fig.add_subplot(grid[rows, :])
    hop = rate // fps
    frames = len(crops)
    envelope = [float(np.sqrt(np.mean(audio[i * hop : (i + 1) * hop] ** 2) + 1e-12)) for i in range(frames)]
    t = np.arange(frames) / fps
    ax.plot(t, envelope, color="#444", linewidth=1)
    ax.scatter(t[shown], [envelope[i] for i in shown], color="#c33", s=10, zorder=3)
    ax.set_xlim(0, max(t[-1], 1 / fps))
    ax.set_xlabel("seconds")
    ax.set_ylabel("audio RMS")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=64)
    plt.close(fig)
    return out
