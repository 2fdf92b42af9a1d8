"""Idle life at the edge: blinks, head sway and breathing on every frame, idle or speaking.

The pacer calls this once per outgoing frame with the frame's program time,
so motion runs on one continuous clock across idle, speech and interrupts:
nothing jumps when speech starts or stops. After speech the last spoken
picture fades back into the idle portrait over ``fade_frames``, which is
what an interrupt returns to.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from anchor.face.portrait import Box, Image, Portrait

_BLINK_S = 0.16  # closing ~40%, opening ~60% of it


def _blink_times(seed: int, horizon_s: float = 3600.0) -> npt.NDArray[np.float64]:
    """Blink onsets: gaps of 2-6 s (people blink ~10-20 times a minute), now and then a double blink."""
    rng = np.random.default_rng(seed)
    times, t = [], 1.0
    while t < horizon_s:
        times.append(t)
        if rng.random() < 0.12:
            times.append(t + 0.35)
        t += rng.uniform(2.0, 6.0)
    return np.asarray(times)


def blink_closure(t: float, onsets: npt.NDArray[np.float64]) -> float:
    """How shut the eyes are at ``t`` (0 open .. 1 shut)."""
    looped = t % onsets[-1]  # the schedule repeats after its last onset (an hour)
    i = int(np.searchsorted(onsets, looped, side="right")) - 1
    if i < 0:
        return 0.0
    dt = float(looped - onsets[i])
    if dt >= _BLINK_S:
        return 0.0
    close = 0.4 * _BLINK_S
    return dt / close if dt < close else 1.0 - (dt - close) / (_BLINK_S - close)


class PortraitLook:
    """The ``VideoLook`` of a portrait: idle frames and the finish every frame gets."""

    def __init__(
        self, portrait: Portrait, *, seed: int = 7, fade_frames: int = 4, motion: float = 1.0
    ) -> None:
        self.portrait = portrait
        self.fade_frames = fade_frames
        self.motion = motion
        self.blink_onsets = _blink_times(seed)
        self._last_spoken: Image | None = None
        self._since_spoken = 0
        self._eyes = [_EyeLid(portrait.image, eye) for eye in portrait.eyes]
        h = portrait.size[1]
        fx = portrait.face.center[0]
        self._pivot = (fx, min(h - 1.0, portrait.face.y + 1.5 * portrait.face.h))  # the neck
        self._phase = seed * 0.37

    def idle_frame(self, t: float) -> Image:
        """The idle picture at program time ``t`` seconds."""
        image = self.portrait.image
        if self._last_spoken is not None and self._since_spoken < self.fade_frames:
            self._since_spoken += 1
            a = self._since_spoken / (self.fade_frames + 1)
            image = cv2.addWeighted(self._last_spoken, 1 - a, self.portrait.image, a, 0.0)
        else:
            self._last_spoken = None
        return self._move(image, t)

    def finish(self, image: Image, t: float) -> Image:
        """A spoken frame (a still portrait with its mouth moved) with the idle life added."""
        if image.shape != self.portrait.image.shape:
            return image  # a picture of another size (a test pattern, another avatar) is left as is
        self._last_spoken, self._since_spoken = image, 0
        return self._move(image, t)

    def _move(self, image: Image, t: float) -> Image:
        closure = blink_closure(t, self.blink_onsets)
        if closure > 0.02:
            image = image.copy()
            for lid in self._eyes:
                lid.close(image, closure)
        if self.motion <= 0:
            return image
        p = self._phase
        # Sums of incommensurate slow sines: sway that never visibly repeats.
        angle = self.motion * (0.9 * math.sin(0.31 * t + p) + 0.4 * math.sin(0.53 * t + 2 * p))
        dx = self.motion * (1.4 * math.sin(0.23 * t + 3 * p) + 0.5 * math.sin(0.71 * t))
        dy = self.motion * (0.6 * math.sin(0.29 * t + p) + 0.8 * math.sin(2 * math.pi * t / 4.2))  # breathing
        scale = 1.0 + self.motion * 0.004 * math.sin(2 * math.pi * t / 4.2)
        matrix = cv2.getRotationMatrix2D(self._pivot, angle, scale)
        matrix[:, 2] += (dx, dy)
        h, w = image.shape[:2]
        out: Image = cv2.warpAffine(
            image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        )
        return out


class _EyeLid:
    """Closes one eye by drawing its upper lid (skin from just above the eye) down over it."""

    def __init__(self, image: Image, eye: Box) -> None:
        h, w = image.shape[:2]
        cx, cy = eye.center
        self.rx, self.ry = 0.36 * eye.w, 0.17 * eye.h
        self.x0, self.x1 = max(0, int(cx - self.rx) - 1), min(w, int(cx + self.rx) + 2)
        self.y0, self.y1 = max(0, int(cy - self.ry) - 1), min(h, int(cy + self.ry) + 2)
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        self._inside = np.clip(1.0 - ((xs - cx) / self.rx) ** 2 - ((ys - cy) / self.ry) ** 2, 0.0, 1.0)
        self._inside = np.clip(self._inside * 6.0, 0.0, 1.0)  # soft edge
        self._rel = (ys - (cy - self.ry)) / (2 * self.ry)  # 0 at the top of the eye, 1 at its bottom
        # Lid skin: the brighter of the strips just above and below the eye (the crease side is shadowed).
        strips = [
            image[max(0, self.y0 - 4) : max(1, self.y0 - 1), self.x0 : self.x1],
            image[min(h - 1, self.y1 + 1) : min(h, self.y1 + 4), self.x0 : self.x1],
        ]
        means = [s.reshape(-1, 3).astype(np.float32).mean(axis=0) for s in strips if s.size]
        skin = max(means, key=lambda m: float(m.sum())) if means else np.full(3, 180.0, dtype=np.float32)
        shade = 1.0 - 0.12 * self._rel[..., None]  # the lid darkens towards its edge
        self._lid = (skin * shade).astype(np.float32)

    def close(self, image: Image, closure: float) -> None:
        region = image[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        lid_edge = closure * 0.7  # the lids meet below the eye's middle
        covered = np.clip((lid_edge - self._rel) * 5.0, 0.0, 1.0) * self._inside
        lash = np.clip(1.0 - np.abs(self._rel - lid_edge) * 7.0, 0.0, 1.0) * np.clip(self._inside * 3, 0, 1)
        out = region + (self._lid - region) * covered[..., None]
        out = out * (1.0 - 0.5 * closure * lash[..., None])
        image[self.y0 : self.y1, self.x0 : self.x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
