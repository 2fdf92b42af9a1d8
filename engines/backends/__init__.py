"""Backends run an engine: arrays in, arrays out, on one device and precision."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engines.spec import Arrays


class Backend(Protocol):
    name: str
    device: str
    precision: str

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        """Blocking inference; call it from a worker thread, never the event loop."""
        ...

    def close(self) -> None: ...
