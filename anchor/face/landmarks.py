"""Dense facial landmarks, found once per avatar: dlib's HOG face detector and 68-point shape predictor.

Why dlib: its wheel (``dlib-bin``) and the predictor (``face-recognition-models``)
install from PyPI beside our onnx and numpy 2, run in ~0.1 s per portrait on
one core, and give the 20 lip points (outer and inner contour) and the jaw
line the mouth rig moves. MediaPipe's face mesh is denser, but its wheel pins
protobuf < 5, which our onnx cannot share; it is the *judge* of our lip sync
instead (``anchor.face.judge``), so the renderer and the measure never share
a detector. The 68-point predictor was trained on the iBUG 300-W data set,
whose licence excludes commercial use: a commercial deployment must swap in
its own landmark model (anything that yields the same 68 points).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.face.errors import AvatarError

Points = npt.NDArray[np.float32]  # [68, 2] (x, y) in image pixels

JAW = slice(0, 17)
RIGHT_EYE = slice(36, 42)  # the subject's right eye: the image's left
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
INNER_LIPS = slice(60, 68)
MOUTH_LEFT, MOUTH_RIGHT = 48, 54  # outer corners, image left and right

#: Smallest face (detector box width, pixels) whose lips are worth animating.
MIN_FACE = 40
#: A second face this large (relative to the largest) makes the avatar ambiguous.
RIVAL_FACE = 0.5
#: Detector scores below this are the HOG detector's usual false positives (clothing, patterns).
MIN_SCORE = 0.3
#: The nose tip's offset from the jaw's midline, as a fraction of the jaw's width: past this, too turned.
MAX_YAW = 0.22


@dataclass(frozen=True)
class FaceFound:
    """The detector's box (x, y, w, h) and the 68 landmarks of one face."""

    box: tuple[int, int, int, int]
    points: Points


def _model_path() -> Path:
    # Located without importing the package: its __init__ needs pkg_resources, gone from new setuptools.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise AvatarError("the landmark model is missing: pip install face-recognition-models")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    )
    if not path.is_file():
        raise AvatarError(f"the landmark model {path} is missing from face-recognition-models")
    return path


@lru_cache(maxsize=1)
def _dlib() -> tuple[Any, Any]:
    """The face detector and the shape predictor, loaded once per process (the predictor is 100 MB)."""
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(_model_path()))


def _shape(predictor: Any, image: npt.NDArray[np.uint8], box: tuple[int, int, int, int]) -> Points:
    import dlib

    x, y, w, h = box
    shape = predictor(image, dlib.rectangle(x, y, x + w, y + h))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def check_pose(points: Points, where: str) -> None:
    """``AvatarError`` when the face is turned too far for a frontal mouth rig."""
    jaw = points[JAW]
    left, right = float(jaw[:, 0].min()), float(jaw[:, 0].max())
    width = right - left
    nose = float(points[30, 0])
    yaw = (nose - (left + right) / 2) / max(width, 1.0)
    if abs(yaw) > MAX_YAW:
        raise AvatarError(
            f"the face in {where} is turned too far to the side (nose {yaw:+.0%} of the face width "
            f"off centre, at most {MAX_YAW:.0%}): use a frontal portrait"
        )


def detect_landmarks(image: npt.NDArray[np.uint8], where: str = "the avatar image") -> FaceFound:
    """The one clearly visible frontal face of an RGB image, with its 68 landmarks, or ``AvatarError``."""
    detector, predictor = _dlib()
    # Upsampling finds small faces (HOG's window is 80 px); on a large image it would only cost time.
    side = max(image.shape[:2])
    upsample = 2 if side <= 640 else 1 if side <= 1280 else 0
    rects, scores, _ = detector.run(image, upsample, 0)
    found = sorted(
        (
            (float(s), (r.left(), r.top(), r.width(), r.height()))
            for r, s in zip(rects, scores, strict=True)
            if s >= MIN_SCORE
        ),
        key=lambda f: -f[1][2] * f[1][3],
    )
    h, w = image.shape[:2]
    if not found:
        raise AvatarError(f"no face found in {where} ({w}x{h})")
    box = found[0][1]
    rivals = [b for _, b in found[1:] if b[2] >= RIVAL_FACE * box[2]]
    if rivals:
        raise AvatarError(
            f"{len(rivals) + 1} faces found in {where}: crop it to the one face that should speak"
        )
    if box[2] < MIN_FACE:
        raise AvatarError(
            f"the face in {where} is {box[2]} px wide, too small to animate (at least {MIN_FACE} px): "
            "use a larger or closer portrait"
        )
    points = _shape(predictor, image, box)
    check_pose(points, where)
    return FaceFound(box=box, points=points)


def track_landmarks(image: npt.NDArray[np.uint8], box: tuple[int, int, int, int]) -> Points:
    """The 68 landmarks of a video frame whose face lies in ``box`` (the detector's box, moved along).

    The shape predictor alone (~1 ms) instead of the detector (~100 ms) per frame.
    """
    _, predictor = _dlib()
    return _shape(predictor, image, box)
