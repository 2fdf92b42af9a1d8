"""The avatar: a portrait, where its face, mouth and eyes are, and seamless paste-back.

Faces and eyes come from OpenCV's bundled Haar cascades (no download). The
mouth line is refined from the pixels: the darkest row across the middle of
the mouth, where lips meet (or, in a smile, where upper and lower teeth meet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


class AvatarError(ValueError):
    """An avatar image or video could not be used (unreadable, or no face in it)."""


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

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def _cascade(name: str) -> cv2.CascadeClassifier:
    path = Path(cv2.__file__).parent / "data" / name  # cv2.data.haarcascades
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise AvatarError(f"OpenCV's bundled cascade {path} could not be loaded")
    return cascade


def detect_face(image: Image) -> Box:
    """The largest frontal face, or ``AvatarError``."""
    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    side = min(image.shape[:2])
    found = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 10),) * 2
    )
    if len(found) == 0:
        raise AvatarError(f"no face found in the {image.shape[1]}x{image.shape[0]} avatar image")
    x, y, w, h = max(found, key=lambda b: int(b[2]) * int(b[3]))
    return Box(int(x), int(y), int(w), int(h))


def _eyes(gray: npt.NDArray[np.uint8], face: Box) -> tuple[Box, ...]:
    upper = gray[face.y : face.y + face.h // 2 + face.h // 8, face.x : face.x + face.w]
    found = _cascade("haarcascade_eye.xml").detectMultiScale(
        upper, scaleFactor=1.05, minNeighbors=3, minSize=(face.w // 8,) * 2, maxSize=(face.w // 2,) * 2
    )
    boxes = sorted(
        (Box(int(x) + face.x, int(y) + face.y, int(w), int(h)) for x, y, w, h in found), key=lambda b: b.x
    )
    if len(boxes) >= 2:
        left = boxes[0]
        right = max(boxes[1:], key=lambda b: b.x)
        if right.x - left.x > face.w // 5:
            return left, right
    # Typical proportions when the cascade misses: eyes at 38% height, 30% / 70% across.
    size = face.w // 4
    return tuple(
        Box(int(face.x + fx * face.w - size / 2), int(face.y + 0.38 * face.h - size / 2), size, size)
        for fx in (0.3, 0.7)
    )


def _mouth(gray: npt.NDArray[np.uint8], face: Box) -> Mouth:
    """The lip line: the darkest row in the mouth band, or, where teeth show below it, their lower edge."""
    cx = face.x + face.w / 2
    half_width = 0.22 * face.w
    guess = face.y + 0.8 * face.h
    lo, hi = max(0, int(guess - 0.09 * face.h)), int(guess + 0.1 * face.h)
    band = gray[lo:hi, int(cx - half_width / 2) : int(cx + half_width / 2)].astype(np.float32)
    y = guess
    if band.size:
        rows = band.mean(axis=1)
        dark = int(np.argmin(rows[: int(0.16 * face.h)]))
        skin = float(np.median(rows))
        after = rows[dark : dark + int(0.12 * face.h)]
        bright = dark + int(np.argmax(after))
        if rows[bright] > skin + 15:  # teeth: part the lips at the bottom of the upper row
            edge = bright
            while edge + 1 < len(rows) and rows[edge + 1] > (rows[bright] + skin) / 2:
                edge += 1
            y = lo + edge + 1.0
        else:
            y = lo + float(dark)
    chin = min(float(gray.shape[0] - 1), face.y + 1.12 * face.h) - y
    return Mouth(cx=cx, y=y, half_width=half_width, chin=max(chin, 0.2 * face.h))


def make_portrait(image: Image, face: Box | None = None) -> Portrait:
    """A portrait from an RGB uint8 image with one clearly visible frontal face (or its known box)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise AvatarError(
            f"avatar must be an RGB uint8 image (height, width, 3), got {image.dtype} {image.shape}"
        )
    face = face or detect_face(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    image = image.copy()
    image.flags.writeable = False
    return Portrait(image=image, face=face, mouth=_mouth(gray, face), eyes=_eyes(gray, face))


def default_image() -> Image:
    """The public-domain portrait bundled with scikit-image (Eileen Collins)."""
    from skimage import data  # imported here: scikit-image is slow to import

    return np.ascontiguousarray(data.astronaut())


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
