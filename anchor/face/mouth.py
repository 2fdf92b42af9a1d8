"""The mouth's pose: three numbers per video frame, whatever drives them (visemes, the GAN, the heuristic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class MouthShape:
    """``open`` (lip gap, jaw with it) and ``round`` (pursed, o/u/w) in [0, 1]; ``width`` in [-1, 1]."""

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0

    def __post_init__(self) -> None:
        for name, value, lo in (
            ("open", self.open, 0.0),
            ("width", self.width, -1.0),
            ("round", self.round, 0.0),
        ):
            if not lo <= value <= 1.0 or value != value:
                raise ValueError(f"MouthShape.{name} must lie in [{lo:g}, 1], got {value}")

    def array(self) -> npt.NDArray[np.float32]:
        return np.array([self.open, self.width, self.round], dtype=np.float32)

    @classmethod
    def of(cls, values: npt.ArrayLike) -> MouthShape:
        """From ``[open, width, round]``, clipped into range (model outputs may overshoot by rounding)."""
        o, w, r = np.asarray(values, dtype=np.float64).reshape(3)
        return cls(float(np.clip(o, 0, 1)), float(np.clip(w, -1, 1)), float(np.clip(r, 0, 1)))


CLOSED = MouthShape()
