"""Voices that are not ours, for benchmarks: Debian's espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from anchor.app.offline import read_wav
from anchor.core.resample import resample


def espeak(text: str, speed: int, pitch: int) -> npt.NDArray[np.float32]:
    """``text`` spoken by espeak-ng (US English) at ``speed`` words/min and ``pitch`` 0-99, 16 kHz mono."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", str(speed), "-p", str(pitch), "-w", str(out), text], check=True
        )
        audio, rate = read_wav(out)
    return resample(audio[:, 0], rate, 16000)
