"""The default face driver: a mouth shaped from the speech audio itself, warped into the portrait.

No phonemes and no weights: per video frame, the level and spectral balance
of the frame's own audio give the mouth's opening, width and rounding:

- opening follows loudness (relative to a slowly adapting peak, so quiet
  and loud voices both move the mouth), less for hissing sounds (s, f, sh
  are said through nearly closed teeth);
- rounding follows a low-heavy spectrum with little in the middle band (oo, o, w);
- width follows a strong middle band (ee, eh) and shrinks as the lips round.

Values are smoothed with a centred 3-tap filter, so a frame needs the audio
of the next frame too: the driver's lookahead is one frame (40 ms at 25 fps).

The renderer moves pixels rather than painting a mouth: below the lip line
the lower lip and jaw drop by the opening (a half-ellipse across the mouth,
fading to nothing by the chin), the upper lip lifts a little, the mouth
narrows or widens about its centre, and the gap shows a shaded inner mouth
with an upper-teeth band. Every displacement reaches zero well inside the
warped region, so the region's border never shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from anchor.face.portrait import Image, Portrait

AUDIO_RATE = 16000
_BANDS = ((80.0, 900.0), (900.0, 2600.0), (2600.0, 7600.0))
_GATE_DB = -55.0
_RANGE_DB = 26.0


@dataclass(frozen=True)
class MouthShape:
    """``open`` and ``round`` in [0, 1]; ``width`` in [-1, 1] (narrow to wide)."""

    open: float = 0.0
    width: float = 0.0
    round: float = 0.0


CLOSED = MouthShape()


def _smoothstep(t: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class MouthTrack:
    """Audio frames in, smoothed mouth shapes out (one frame behind: the 3-tap filter's lookahead)."""

    peak_db: float = -20.0
    _raw: list[MouthShape] = field(default_factory=lambda: [CLOSED])

    def analyse(self, audio: npt.NDArray[np.float32]) -> MouthShape:
        """The raw (unsmoothed) shape for one frame's 16 kHz audio."""
        if len(audio) == 0:
            return CLOSED
        level_db = 10 * float(np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-12))
        self.peak_db = max(level_db, self.peak_db - 0.4, -30.0)
        if level_db < _GATE_DB:
            return CLOSED
        loud = float(np.clip((level_db - (self.peak_db - _RANGE_DB)) / _RANGE_DB, 0.0, 1.0)) ** 0.8
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio)), n=1024)) ** 2
        freqs = np.fft.rfftfreq(1024, 1 / AUDIO_RATE)
        low, mid, high = (float(spectrum[(freqs >= a) & (freqs < b)].sum()) for a, b in _BANDS)
        total = low + mid + high + 1e-12
        hiss, middle, bass = high / total, mid / total, low / total
        rounding = float(np.clip((bass - 0.7) * 3.5 - middle, 0.0, 1.0)) * loud
        width = float(np.clip((middle - 0.25) * 2.5 - rounding, -1.0, 1.0)) * loud
        opening = loud * (1.0 - 0.6 * float(np.clip((hiss - 0.2) * 2.0, 0.0, 1.0)))
        return MouthShape(open=opening, width=width, round=rounding)

    def push(self, audio: npt.NDArray[np.float32]) -> MouthShape | None:
        """Add the next frame's audio; returns the smoothed shape of the frame before it (None at first)."""
        self._raw.append(self.analyse(audio))
        if len(self._raw) < 3:
            return None
        before, now, after = self._raw[-3:]
        self._raw = self._raw[-2:]
        return MouthShape(
            *(
                0.25 * a + 0.5 * b + 0.25 * c
                for a, b, c in zip(_vals(before), _vals(now), _vals(after), strict=True)
            )
        )

    def finish(self) -> MouthShape | None:
        """The last frame's shape, smoothed towards a closed mouth."""
        return self.push(np.zeros(0, dtype=np.float32))


def _vals(shape: MouthShape) -> tuple[float, float, float]:
    return shape.open, shape.width, shape.round


class MouthRenderer:
    """Warps a portrait's mouth region to a ``MouthShape``; everything else is the portrait as is."""

    #: Largest lip gap, as a fraction of the mouth's half width.
    max_open = 0.6

    def __init__(self, portrait: Portrait) -> None:
        self.portrait = portrait
        m = portrait.mouth
        h, w = portrait.image.shape[:2]
        hw = m.half_width
        self.x0, self.x1 = max(0, int(m.cx - 1.7 * hw)), min(w, int(m.cx + 1.7 * hw) + 1)
        self.y0, self.y1 = max(0, int(m.y - 0.9 * hw)), min(h, int(m.y + m.chin + 0.7 * hw) + 1)
        ys, xs = np.mgrid[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)
        self._xs, self._ys = xs, ys
        self._u = (xs - m.cx) / hw  # -1..1 across the mouth
        below = ys - m.y
        self._below = below
        # How much of the lip gap a pixel below the line follows (1 at the lips, 0 at the chin and beyond).
        reach = m.chin + 0.6 * hw
        self._fall_low = 1.0 - _smoothstep((below - 0.35 * m.chin) / (reach - 0.35 * m.chin))
        self._fall_up = 1.0 - _smoothstep(-below / (0.85 * hw))
        self._jaw = 1.0 - _smoothstep(
            (np.abs(self._u) - 0.9) / 0.7
        )  # the jaw moves as one, wider than the lips
        self._lip_blend = _smoothstep(below / (0.45 * hw))  # lower lip (0) to jaw (1)
        self._near = (1.0 - _smoothstep((np.abs(self._u) - 1.0) / 0.6)) * (
            1.0 - _smoothstep((np.abs(below) - 0.3 * hw) / (0.5 * hw))
        )  # the width change: nothing left 0.8 half-widths above or below the lip line
        self.base = portrait.image
        self._roi = portrait.image[self.y0 : self.y1, self.x0 : self.x1].astype(np.float32)

    def render(self, shape: MouthShape) -> Image:
        m = self.portrait.mouth
        hw = m.half_width
        d = shape.open * self.max_open * hw
        if d < 0.25 and abs(shape.width) < 0.02 and shape.round < 0.02:
            return self.base
        sx = 1.0 + 0.12 * shape.width - 0.22 * shape.round
        u = self._u / sx
        profile = np.sqrt(np.clip(1.0 - u * u, 0.0, None)) ** (1.2 - 0.5 * shape.round)
        gap = d * profile
        lift = 0.2 * gap
        drop = (gap + (d * self._jaw - gap) * self._lip_blend) * self._fall_low
        below = self._below
        src_y = np.where(below >= 0, self._ys - drop, self._ys + lift * self._fall_up)
        src_x = self._xs - (self._xs - m.cx) * (1.0 - 1.0 / sx) * self._near
        out = cv2.remap(
            self._roi,
            (src_x - self.x0).astype(np.float32),
            (src_y - self.y0).astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        # The inner mouth: where the output lies between the lifted upper lip and the dropped lower lip.
        inside = np.minimum(below + lift, gap - below)
        alpha = np.clip(inside, 0.0, 1.0)[..., None] * (gap > 0.4)[..., None]
        depth = np.clip((below + lift) / np.maximum(gap + lift, 1e-3), 0.0, 1.0)
        cavity = np.stack(
            [70 - 40 * depth, 22 - 12 * depth, 28 - 14 * depth], axis=-1
        )  # dark red, darker low
        teeth = _smoothstep(1.0 - (below + lift) / np.maximum(0.28 * (gap + lift), 1.0))[..., None]
        cavity = cavity + (np.array([228.0, 222.0, 212.0]) - cavity) * teeth * 0.85
        out = out + (cavity.astype(np.float32) - out) * alpha
        frame = self.base.copy()
        frame[self.y0 : self.y1, self.x0 : self.x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return frame


def mouth_opening(frame: Image, portrait: Portrait) -> float:
    """How open the mouth looks in a rendered frame: the mean darkening of the mouth area vs the portrait.

    Measured from pixels only (with the portrait's known geometry), so tests
    and benchmarks judge the picture, not the driver's internal state.
    """
    m = portrait.mouth
    hw = m.half_width
    y0, y1 = int(m.y - 0.4 * hw), int(m.y + 1.0 * hw)
    x0, x1 = int(m.cx - 0.8 * hw), int(m.cx + 0.8 * hw)
    rest = portrait.image[y0:y1, x0:x1].astype(np.float32).mean(axis=2)
    now = frame[y0:y1, x0:x1].astype(np.float32).mean(axis=2)
    return float(np.clip(rest - now, 0, None).mean())
