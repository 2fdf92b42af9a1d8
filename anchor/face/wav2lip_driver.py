"""The Wav2Lip face driver: the GAN redraws the lower face, which is pasted back without a seam.

The crop is the detected face with Wav2Lip's default padding (10 px more
below the chin, scaled to the image), resized to 96x96. Every frame feeds
the generator the crop with its lower half blanked plus the crop itself as
the reference, and the frame's 16-mel window. The generated lower face goes
back through a mask that is zero on the crop's edge and in its upper half,
after matching its colours to the portrait, so neither the box nor a colour
step shows (the best-known complaint about Wav2Lip's own paste-back).
Frames of every session go through the engine hub, which batches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np
import numpy.typing as npt

from anchor.core.stage import StageContext
from anchor.face.face_stage import FaceTrack, Heard, looped
from anchor.face.portrait import Box, Image, Portrait, feathered_mask, paste
from anchor.face.visemes import Timed
from engines.face.wav2lip import FACE_SIZE, lookahead_samples, streaming_windows

ENGINE = "wav2lip"


def wav2lip_crop(portrait: Portrait) -> Box:
    """The face box grown as Wav2Lip's ``--pads 0 10 0 0`` (at its 96 px scale), inside the image."""
    f = portrait.face
    w, h = portrait.size
    below = round(10 * f.h / FACE_SIZE)
    y1 = min(h, f.y + f.h + below)
    return Box(max(0, f.x), max(0, f.y), min(w, f.x + f.w) - max(0, f.x), y1 - max(0, f.y))


def lower_face_mask(h: int, w: int) -> npt.NDArray[np.float32]:
    """Feathered to zero on every edge and over the upper half (which the generator only copies)."""
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    upper = np.clip((rows - 0.42) / 0.16, 0.0, 1.0)
    return np.asarray(feathered_mask(h, w) * (upper * upper * (3 - 2 * upper)), dtype=np.float32)


@dataclass(frozen=True)
class _Crop:
    portrait: Portrait
    box: Box
    faces: npt.NDArray[np.float32]  # [1, 6, 96, 96]: masked target, then reference
    mask: npt.NDArray[np.float32]

    @classmethod
    def of(cls, portrait: Portrait) -> _Crop:
        b = wav2lip_crop(portrait)
        crop = portrait.image[b.y : b.y + b.h, b.x : b.x + b.w]
        face = cv2.resize(crop[:, :, ::-1], (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        reference = np.asarray(face, dtype=np.float32).transpose(2, 0, 1) / 255  # BGR, [3, 96, 96]
        masked = reference.copy()
        masked[:, FACE_SIZE // 2 :] = 0
        return cls(portrait, b, np.concatenate([masked, reference])[None], lower_face_mask(b.h, b.w))

    def compose(self, generated: npt.NDArray[np.float32]) -> Image:
        b = self.box
        rgb = np.ascontiguousarray(generated[::-1].transpose(1, 2, 0))
        face = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
        return paste(
            self.portrait.image, cv2.resize(face, (b.w, b.h), interpolation=cv2.INTER_CUBIC), b, self.mask
        )


class Wav2LipDriver:
    """Wav2Lip on one portrait, or on each frame of a video avatar in a forwards-backwards loop."""

    history_samples = 601  # half a mel window, a hop of rounding in its start, one sample of pre-emphasis

    def __init__(self, *portraits: Portrait, engine: str = ENGINE) -> None:
        if not portraits:
            raise ValueError("Wav2LipDriver needs at least one portrait")
        self.engine = engine
        self.crops = [_Crop.of(p) for p in portraits]

    def lookahead_samples(self, fps: Fraction) -> int:
        return lookahead_samples(float(fps))

    async def prepare(self, ctx: StageContext) -> None:
        await ctx.engines.prepare(self.engine)

    def track(self, fps: Fraction) -> FaceTrack:
        return _Wav2LipTrack(self, fps)

    def crops_for(self, first: int, count: int) -> list[_Crop]:
        return [self.crops[looped(first + k, len(self.crops))] for k in range(count)]

    def compose(self, generated: npt.NDArray[np.float32], first: int = 0) -> list[Image]:
        """Paste ``[N, 3, 96, 96]`` BGR faces in [0, 1] (frames ``first ..``) back into their portraits."""
        return [c.compose(g) for c, g in zip(self.crops_for(first, len(generated)), generated, strict=True)]


class _Wav2LipTrack:
    def __init__(self, driver: Wav2LipDriver, fps: Fraction) -> None:
        self.driver = driver
        self.fps = fps

    def hear_phonemes(self, phonemes: Sequence[Timed]) -> None:
        return None  # Wav2Lip draws from the mel alone

    async def render(self, ctx: StageContext, heard: Heard, first: int, count: int) -> list[Image]:
        d = self.driver
        windows = await ctx.run_blocking(
            streaming_windows, heard.audio, heard.start, first, count, float(self.fps)
        )
        faces = np.concatenate([c.faces for c in d.crops_for(first, count)])
        result = await ctx.infer(d.engine, {"audio": windows, "faces": faces})
        generated = np.asarray(result["face"], dtype=np.float32)
        return await ctx.run_blocking(d.compose, generated, first)
