"""Choosing what draws the face: one name, one driver, the same for live sessions and ``anchor lipsync``."""

from __future__ import annotations

from typing import Literal

from anchor.face.face_stage import AnimatorDriver, FaceDriver
from anchor.face.mouth_driver import MouthGanDriver
from anchor.face.portrait import Portrait
from anchor.face.rig import MouthRig
from anchor.face.wav2lip_driver import Wav2LipDriver

DriverName = Literal["gan", "wav2lip", "animator"]


def face_driver(name: DriverName, *portraits: Portrait) -> FaceDriver:
    """``gan``: our mouth GAN moving the landmark rig; ``wav2lip``: a public Wav2Lip checkpoint;
    ``animator``: the rig moved by the sound's level and spectrum, no weights."""
    if name == "gan":
        return MouthGanDriver(*portraits)
    if name == "wav2lip":
        return Wav2LipDriver(*portraits, engine="wav2lip")
    if name == "animator":
        return AnimatorDriver(*(MouthRig(p) for p in portraits))
    raise ValueError(f"unknown face driver {name!r}: expected gan, wav2lip or animator")
