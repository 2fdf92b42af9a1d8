"""The media clock: sample counts are time, and video frames are spans of samples.

Audio is the master clock. Video frame ``i`` at ``fps`` shows the audio samples
``[floor(i*sr/fps), floor((i+1)*sr/fps))``; using exact rational arithmetic
keeps rates such as 30000/1001 fps drift-free over hours.
"""

from __future__ import annotations

from fractions import Fraction


def video_frame_span(index: int, sample_rate: int, fps: Fraction | int) -> tuple[int, int]:
    """The half-open audio sample range that video frame ``index`` covers."""
    rate = Fraction(sample_rate) / Fraction(fps)
    return int(index * rate), int((index + 1) * rate)


def video_frames_complete(samples: int, sample_rate: int, fps: Fraction | int) -> int:
    """How many whole video frames ``samples`` audio samples cover."""
    return int(Fraction(samples) * Fraction(fps) / sample_rate)


def samples_for_ms(ms: float, sample_rate: int) -> int:
    return round(ms * sample_rate / 1000)
