"""Program audio and video into an MP4 (H.264 + AAC) or an RTMP/FLV stream, with PyAV.

Video frames carry their own index on a ``1/fps`` time base and audio its
sample count on a ``1/sample_rate`` time base, so the container holds the
media clock's pts exactly (A/V offset comes only from the codecs' own
delays, which the muxer records).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import numpy.typing as npt

_AAC_FRAME = 1024


class MediaWriter:
    """Write RGB frames and mono float audio to ``target`` (a file path, or a URL with ``format``)."""

    def __init__(
        self,
        target: Path | str,
        *,
        width: int,
        height: int,
        fps: int,
        sample_rate: int,
        format: str | None = None,
        video_bitrate: int = 2_000_000,
        audio_bitrate: int = 128_000,
        options: dict[str, str] | None = None,
    ) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 with yuv420p needs even sizes, got {width}x{height}")
        self.container: Any = av.open(str(target), mode="w", format=format, options=options or {})
        self.fps = fps
        self.sample_rate = sample_rate
        video = self.container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = video_bitrate
        video.time_base = Fraction(1, fps)
        video.options = {"preset": "veryfast", "tune": "zerolatency", "g": str(2 * fps)}
        audio = self.container.add_stream("aac", rate=sample_rate)
        audio.layout = "mono"
        audio.bit_rate = audio_bitrate
        audio.time_base = Fraction(1, sample_rate)
        self.video, self.audio = video, audio
        self._frames = 0
        self._samples = 0
        self._pending = np.zeros(0, dtype=np.float32)
        self._closed = False

    def add_video(self, image: npt.NDArray[np.uint8], index: int | None = None) -> None:
        """A video frame (RGB, the writer's size): the next, or frame ``index`` (gaps allowed, never back)."""
        if image.shape != (self.video.height, self.video.width, 3):
            raise ValueError(
                f"frame is {image.shape}, the stream is {self.video.height}x{self.video.width}x3"
            )
        if index is not None and index < self._frames:
            raise ValueError(f"video frame {index} comes after frame {self._frames - 1}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self._frames if index is None else index
        frame.time_base = Fraction(1, self.fps)
        self._frames = frame.pts + 1
        self.container.mux(self.video.encode(frame))

    def add_audio(self, pcm: npt.NDArray[np.float32], at: int | None = None) -> None:
        """Mono samples in [-1, 1] at the writer's rate: the next, or starting at sample ``at``.

        A gap before ``at`` is filled with silence; samples before what was
        already written are dropped, so the audio track stays continuous.
        """
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if at is not None:
            written = self._samples + len(self._pending)
            if at > written:
                pcm = np.concatenate([np.zeros(at - written, dtype=np.float32), pcm])
            elif at < written:
                pcm = pcm[written - at :]
        self._pending = np.concatenate([self._pending, pcm])
        while len(self._pending) >= _AAC_FRAME:
            self._encode_audio(self._pending[:_AAC_FRAME])
            self._pending = self._pending[_AAC_FRAME:]

    def _encode_audio(self, block: npt.NDArray[np.float32]) -> None:
        frame = av.AudioFrame.from_ndarray(np.clip(block, -1, 1).reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples
        frame.time_base = Fraction(1, self.sample_rate)
        self._samples += len(block)
        self.container.mux(self.audio.encode(frame))

    @property
    def seconds(self) -> tuple[float, float]:
        """Video and audio written so far, in seconds."""
        return self._frames / self.fps, (self._samples + len(self._pending)) / self.sample_rate

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if len(self._pending):
                self._encode_audio(self._pending)
            self.container.mux(self.video.encode(None))
            self.container.mux(self.audio.encode(None))
        finally:
            self.container.close()

    def __enter__(self) -> MediaWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
