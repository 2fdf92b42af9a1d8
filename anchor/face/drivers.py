"""Choosing what draws the face: one name, one driver, the same for live sessions and ``anchor lipsync``."""

from __future__ import annotations

from typing import Literal

from anchor.face.animator import MouthRenderer
from anchor.face.portrait import Portrait
from anchor.face.stage import AnimatorDriver, FaceDriver
from anchor.face.wav2lip_driver import Wav2LipDriver
from engines.face.wav2lip import FACE_GAN

DriverName = Literal["gan", "wav2lip", "animator"]


def face_driver(name: DriverName, *portraits: Portrait) -> FaceDriver:
    """``gan``: our trained face GAN; ``wav2lip``: a public Wav2Lip checkpoint; ``animator``: no weights."""
    if name == "gan":
        return Wav2LipDriver(*portraits, engine=FACE_GAN)
    if name == "wav2lip":
        return Wav2LipDriver(*portraits, engine="wav2lip")
    if name == "animator":
        return AnimatorDriver(*(MouthRenderer(p) for p in portraits))
    raise ValueError(f"unknown face driver {name!r}: expected gan, wav2lip or animator")
