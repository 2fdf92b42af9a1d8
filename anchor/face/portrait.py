"""The avatar: a portrait, its 68 facial landmarks, where its face, mouth and eyes are; paste-back.

Landmarks come from dlib (``anchor.face.landmarks``), found once per
portrait; the face box, the mouth line and the eyes are read off them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from anchor.face.errors import AvatarError
from anchor.face.landmarks import (
    INNER_LIPS,
    LEFT_EYE,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    RIGHT_EYE,
    FaceFound,
    Points,
    detect_landmarks,
)
from anchor.face.mouth import CLOSED

__all__ = ["AvatarError", "Box", "Image", "Mouth", "Portrait", "make_portrait"]

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.w / 2, self.y + self.h / 2


@dataclass(frozen=True)
class Mouth:
    """Mouth centre (x), the row where the lips part (y), its half width and the chin's distance."""

    cx: float
    y: float
    half_width: float
    chin: float


@dataclass(frozen=True)
class Portrait:
    image: Image  # RGB
    face: Box
    mouth: Mouth
    eyes: tuple[Box, ...]
    landmarks: Points  # [68, 2], dlib's order (``anchor.face.landmarks``)
    #: The teeth's RGB as the photo showed them before its rest pose closed the mouth, if it did.
    teeth: tuple[float, float, float] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def _eye_box(points: Points) -> Box:
    """A square around one eye's six landmarks, 1.5 eye widths across (what the eyelid blink draws in)."""
    cx, cy = points.mean(axis=0)
    side = 1.5 * float(np.linalg.norm(points[3] - points[0]))
    return Box(round(cx - side / 2), round(cy - side / 2), round(side), round(side))


def _mouth(points: Points) -> Mouth:
    left, right = points[MOUTH_LEFT], points[MOUTH_RIGHT]
    seam = float(points[INNER_LIPS][:, 1].mean())
    return Mouth(
        cx=float(left[0] + right[0]) / 2,
        y=seam,
        half_width=float(np.linalg.norm(right - left)) / 2,
        chin=max(1.0, float(points[8, 1]) - seam),
    )


def check_image(image: Image) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise AvatarError(
            f"avatar must be an RGB uint8 image (height, width, 3), got {image.dtype} {image.shape}"
        )


def make_portrait(image: Image, found: FaceFound | None = None) -> Portrait:
    """A portrait from an RGB uint8 image with one clearly visible frontal face (or its known landmarks)."""
    check_image(image)
    found = found or detect_landmarks(image)
    portrait = _portrait(image, found.box, found.points)
    from anchor.face.rig import MouthRig  # the rig draws on portraits: imported here, not at the top

    rig = MouthRig(portrait)
    if not rig.opened_in_photo:
        return portrait
    # A mouth open in the photo (a smile with teeth) is closed once, so idle and speech share one rest pose.
    teeth = rig.photo_teeth
    return _portrait(rig.render(CLOSED), found.box, rig.points(CLOSED), teeth)


def _portrait(
    image: Image,
    box: tuple[int, int, int, int],
    points: Points,
    teeth: tuple[float, float, float] | None = None,
) -> Portrait:
    points = np.array(points, dtype=np.float32)
    points.flags.writeable = False
    image = image.copy()
    image.flags.writeable = False
    return Portrait(
        image=image,
        face=Box(*box),
        mouth=_mouth(points),
        eyes=(_eye_box(points[RIGHT_EYE]), _eye_box(points[LEFT_EYE])),
        landmarks=points,
        teeth=teeth,
    )


def default_image() -> Image:
    """The public-domain portrait bundled with scikit-image (Eileen Collins)."""
    from skimage import data  # imported here: scikit-image is slow to import

    return np.ascontiguousarray(data.astronaut())


def second_image() -> Image:
    """A second public-domain portrait with a closed mouth: Grace Hopper (US Navy photo), from matplotlib."""
    import matplotlib  # imported here: only benchmarks and tests use it

    return load_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


def load_image(path: Path, size: tuple[int, int] | None = None) -> Image:
    """An RGB image from a file, optionally fitted (centre crop, then resize) to ``size`` = (w, h)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AvatarError(f"avatar {path} is not a readable image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return fit(rgb, size) if size else rgb


def fit(image: Image, size: tuple[int, int]) -> Image:
    """Centre-crop to the aspect of ``size`` = (w, h), then resize to it."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = min(iw / w, ih / h)
    cw, ch = round(w * scale), round(h * scale)
    x0, y0 = (iw - cw) // 2, (ih - ch) // 2
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    if (cw, ch) == (w, h):
        return np.ascontiguousarray(crop)
    return np.asarray(cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def feathered_mask(h: int, w: int, *, feather: float = 0.18) -> npt.NDArray[np.float32]:
    """A rounded-square mask, 1 inside and falling smoothly to exactly 0 on every edge."""
    ys = np.abs(np.linspace(-1, 1, h, dtype=np.float32))[:, None]
    xs = np.abs(np.linspace(-1, 1, w, dtype=np.float32))[None, :]
    r = (xs**4 + ys**4) ** 0.25  # >= 1 wherever x or y is on an edge
    t = np.clip((1.0 - r) / feather, 0.0, 1.0)
    return np.asarray(t * t * (3 - 2 * t), dtype=np.float32)


def match_colour(
    patch: npt.NDArray[np.float32], target: npt.NDArray[np.float32], mask: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``patch`` moved per channel (in Lab) to the mean and spread of ``target`` under ``mask``."""
    weights = mask[..., None]
    total = float(weights.sum()) or 1.0
    a = cv2.cvtColor(patch, cv2.COLOR_RGB2LAB)
    b = cv2.cvtColor(target, cv2.COLOR_RGB2LAB)
    mean_a = (a * weights).sum(axis=(0, 1)) / total
    mean_b = (b * weights).sum(axis=(0, 1)) / total
    std_a = np.sqrt(((a - mean_a) ** 2 * weights).sum(axis=(0, 1)) / total) + 1e-3
    std_b = np.sqrt(((b - mean_b) ** 2 * weights).sum(axis=(0, 1)) / total) + 1e-3
    scale = np.clip(std_b / std_a, 0.5, 2.0)
    matched = (a - mean_a) * scale + mean_b
    rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.asarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32)


def paste(base: Image, patch: Image, box: Box, mask: npt.NDArray[np.float32]) -> Image:
    """``base`` with ``patch`` (sized to ``box``) blended in under ``mask``, colour-matched to ``base``.

    The mask is 0 on the box's edge, so the box itself never shows.
    """
    out = base.copy()
    region = base[box.y : box.y + box.h, box.x : box.x + box.w].astype(np.float32) * np.float32(1 / 255)
    fresh = match_colour(patch.astype(np.float32) * np.float32(1 / 255), region, mask)
    blended = region + (fresh - region) * mask[..., None]
    out[box.y : box.y + box.h, box.x : box.x + box.w] = np.round(blended * 255).astype(np.uint8)
    return out
