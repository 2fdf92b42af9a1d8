"""Typed, immutable frames: the only things that travel between stages.

Two lanes: ``SystemFrame`` subclasses (interrupts, errors, barge-in signals)
never queue behind media; ``DataFrame`` subclasses travel through bounded
media channels in order.

Every pts is an integer sample index at the frame's ``sample_rate``, counted
from the start of its utterance; the output pacer maps utterances onto one
continuous program timeline (see ``anchor.core.pacer``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import ClassVar, Literal, Self

import numpy as np
import numpy.typing as npt

from anchor.core.clock import video_frame_span

Stamp = tuple[str, int]
EndReason = Literal["done", "interrupted", "error"]


def _readonly(array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """Base of every frame: the utterance it belongs to, and trace stamps."""

    utterance_id: str = ""
    uninterruptible: bool = False
    stamps: tuple[Stamp, ...] = ()

    system: ClassVar[bool] = False

    def stamped(self, name: str) -> Self:
        """A copy with a ``(name, monotonic ns)`` trace stamp appended."""
        return replace(self, stamps=(*self.stamps, (name, time.monotonic_ns())))

    @property
    def duration_ms(self) -> float:
        """Media duration; zero for frames that carry no media."""
        return 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DataFrame(Frame):
    """A frame that travels through media channels, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemFrame(Frame):
    """A control-lane frame: handled at once, never queued behind media."""

    system: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioChunk(DataFrame):
    """Float32 PCM in [-1, 1], shape ``(samples,)`` mono or ``(samples, channels)``."""

    pcm: npt.NDArray[np.float32]
    sample_rate: int
    pts: int = 0

    def __post_init__(self) -> None:
        pcm = self.pcm
        if not isinstance(pcm, np.ndarray):
            raise ValueError(f"AudioChunk.pcm must be a numpy array, got {type(pcm).__name__}")
        if pcm.dtype != np.float32:
            raise ValueError(f"AudioChunk.pcm must be float32, got {pcm.dtype}")
        if pcm.ndim not in (1, 2) or (pcm.ndim == 2 and pcm.shape[1] < 1):
            raise ValueError(
                f"AudioChunk.pcm must be shaped (samples,) or (samples, channels), got {pcm.shape}"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"AudioChunk.sample_rate must be positive, got {self.sample_rate}")
        if self.pts < 0:
            raise ValueError(f"AudioChunk.pts must be >= 0, got {self.pts}")
        object.__setattr__(self, "pcm", _readonly(pcm))

    @property
    def num_samples(self) -> int:
        return int(self.pcm.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.pcm.ndim == 1 else int(self.pcm.shape[1])

    @property
    def end_pts(self) -> int:
        return self.pts + self.num_samples

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.num_samples / self.sample_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class MelChunk(DataFrame):
    """Log-mel frames shaped ``(n_mels, frames)``; ``pts`` is in audio samples."""

    mel: npt.NDArray[np.float32]
    sample_rate: int
    hop_length: int
    pts: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.mel, np.ndarray) or self.mel.ndim != 2:
            shape = getattr(self.mel, "shape", None)
            raise ValueError(f"MelChunk.mel must be a 2-D array (n_mels, frames), got {shape}")
        if self.mel.dtype != np.float32:
            raise ValueError(f"MelChunk.mel must be float32, got {self.mel.dtype}")
        if self.sample_rate <= 0 or self.hop_length <= 0:
            raise ValueError(
                "MelChunk.sample_rate and hop_length must be positive, got "
                f"{self.sample_rate} and {self.hop_length}"
            )
        if self.pts < 0:
            raise ValueError(f"MelChunk.pts must be >= 0, got {self.pts}")
        object.__setattr__(self, "mel", _readonly(self.mel))

    @property
    def num_frames(self) -> int:
        return int(self.mel.shape[1])

    @property
    def duration_ms(self) -> float:
        return 1000.0 * self.num_frames * self.hop_length / self.sample_rate


@dataclass(frozen=True, slots=True, kw_only=True)
class VideoFrame(DataFrame):
    """An RGB uint8 image ``(height, width, 3)``.

    ``index`` is the frame number within the utterance; the frame shows the
    mouth for audio samples ``[offset + index*sr/fps, offset + (index+1)*sr/fps)``
    at ``sample_rate`` (the audio clock's rate), so ``pts`` is the first of
    those samples. Stages leave ``offset`` at 0; the pacer sets it to where
    the utterance starts on the program timeline.
    """

    image: npt.NDArray[np.uint8]
    index: int
    fps: Fraction
    sample_rate: int
    offset: int = 0

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f"VideoFrame.image must be shaped (height, width, 3), got {getattr(img, 'shape', None)}"
            )
        if img.dtype != np.uint8:
            raise ValueError(f"VideoFrame.image must be uint8, got {img.dtype}")
        if self.index < 0 or self.offset < 0:
            raise ValueError(f"VideoFrame.index and offset must be >= 0, got {self.index} and {self.offset}")
        if self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError(
                f"VideoFrame.fps and sample_rate must be positive, got {self.fps} and {self.sample_rate}"
            )
        object.__setattr__(self, "fps", Fraction(self.fps))
        object.__setattr__(self, "image", _readonly(img))

    @property
    def pts(self) -> int:
        return self.offset + video_frame_span(self.index, self.sample_rate, self.fps)[0]

    @property
    def end_pts(self) -> int:
        return self.offset + video_frame_span(self.index, self.sample_rate, self.fps)[1]

    @property
    def duration_ms(self) -> float:
        return float(1000 / self.fps)


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(DataFrame):
    """A piece of response text, in order; the utterance ends with ``EndOfUtterance``."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Phonemes(DataFrame):
    """What the voice is about to say and when: phoneme ``k`` (espeak-ng IPA) spans samples
    ``bounds[k] .. bounds[k+1]`` of the utterance at ``sample_rate``. Sent before the audio it times,
    so the face can shape the mouth from the phonemes rather than guess them from the sound."""

    symbols: tuple[str, ...]
    bounds: tuple[int, ...]
    sample_rate: int

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.symbols) + 1:
            raise ValueError(
                f"Phonemes needs one bound more than symbols, got {len(self.symbols)} and {len(self.bounds)}"
            )
        if any(b < a for a, b in zip(self.bounds, self.bounds[1:], strict=False)) or self.bounds[0] < 0:
            raise ValueError("Phonemes.bounds must be non-negative and non-decreasing")
        if self.sample_rate <= 0:
            raise ValueError(f"Phonemes.sample_rate must be positive, got {self.sample_rate}")


@dataclass(frozen=True, slots=True)
class WordTiming:
    word: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript(DataFrame):
    """What a viewer said: partial hypotheses while speaking, then one final."""

    text: str
    final: bool
    start_ms: float = 0.0
    end_ms: float = 0.0
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Say(DataFrame):
    """A command to speak ``text`` as a new utterance."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Ask(DataFrame):
    """A viewer's question (spoken or typed): answer it as a new utterance."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfUtterance(DataFrame):
    """The last data frame of an utterance on every path it takes."""

    reason: EndReason = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt(SystemFrame):
    """Cancel every interruptible utterance in flight, flush, return to idle."""

    reason: str = "interrupt"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted(SystemFrame):
    """A viewer started speaking (barge-in trigger)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(SystemFrame):
    """A stage failed on one utterance; that utterance ends, nothing else does."""

    stage: str
    message: str
    trace: tuple[Stamp, ...] = field(default=())
