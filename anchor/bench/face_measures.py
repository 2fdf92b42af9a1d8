"""How a rendered talk looks, from pixels: lip sync by an independent judge, identity and sharpness kept.

- ``lip_sync``: the judge's inner-lip opening per frame (MediaPipe's face
  mesh, ``anchor.bench.judge``; never the rig's own dlib landmarks) against
  the audio envelope: the lag (frames) where they correlate best, and how well.
- ``identity``: SSIM of the face above the upper lip between each frame and
  the source photo (the rig must leave it the photo's own), and the mouth
  region's sharpness (variance of the Laplacian) relative to the photo's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.face.landmarks import FaceFound
from anchor.face.portrait import Image
from anchor.testing.quality import best_lag, envelope, sharpness, ssim


def lip_sync(
    openings: npt.NDArray[np.float64], audio: npt.NDArray[np.float32], rate: int, fps: int
) -> dict[str, Any]:
    lag, correlation = best_lag(openings, envelope(audio, rate, fps, len(openings)))
    return {"lag_frames": lag, "correlation": round(correlation, 3), "frames": len(openings)}


def regions(found: FaceFound) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(the face above the upper lip, the mouth and chin) in the photo's pixels."""
    p = found.points
    x, y, w, _ = found.box
    width = float(p[54, 0] - p[48, 0])
    lip_top = float(p[49:54, 1].min())
    above = (slice(max(0, y), int(lip_top - 0.08 * width)), slice(max(0, x), x + w))
    mouth = (
        slice(int(lip_top - 0.2 * width), int(p[57, 1] + 0.5 * width)),
        slice(int(p[48, 0] - 0.3 * width), int(p[54, 0] + 0.3 * width)),
    )
    return above, mouth


def identity(frames: Sequence[Image], photo: Image, found: FaceFound) -> dict[str, float]:
    above, mouth = regions(found)
    scores = [ssim(f[above], photo[above]) for f in frames]
    detail = float(np.mean([sharpness(f[mouth]) for f in frames])) / max(sharpness(photo[mouth]), 1e-9)
    return {
        "ssim_above_lip_min": round(float(np.min(scores)), 4),
        "ssim_above_lip_mean": round(float(np.mean(scores)), 4),
        "mouth_sharpness_ratio": round(detail, 3),
    }
