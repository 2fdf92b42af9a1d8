"""The weightless face driver: a mouth shape from the speech audio's level and spectrum.

No phonemes and no weights (the mouth GAN learns this mapping properly):
per video frame, the level and spectral balance of the frame's own audio
give the mouth's opening, width and rounding:

- opening follows loudness (relative to a slowly adapting peak, so quiet
  and loud voices both move the mouth), less for hissing sounds (s, f, sh
  are said through nearly closed teeth);
- rounding follows a low-heavy spectrum with little in the middle band (oo, o, w);
- width follows a strong middle band (ee, eh) and shrinks as the lips round.

Values are smoothed with a centred 3-tap filter, so a frame needs the audio
of the next frame too: the driver's lookahead is one frame (40 ms at 25 fps).

The shapes are drawn by the mouth rig (``anchor.face.rig``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from anchor.face.mouth import CLOSED, MouthShape
from anchor.face.portrait import Image, Portrait

AUDIO_RATE = 16000
_BANDS = ((80.0, 900.0), (900.0, 2600.0), (2600.0, 7600.0))
_GATE_DB = -55.0
_RANGE_DB = 26.0
SPEECH_OPEN = 0.6


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
        # Full voice opens the jaw to about 60 % of its range (the rest is for shouting and yawns).
        opening = SPEECH_OPEN * loud * (1.0 - 0.6 * float(np.clip((hiss - 0.2) * 2.0, 0.0, 1.0)))
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
