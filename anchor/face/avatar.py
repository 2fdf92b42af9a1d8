"""Avatars from files: an image, or a short video played in a forwards-backwards loop.

Video frames get their face boxes detected one by one, then smoothed over a
few frames (a detector jitters by a few pixels from frame to frame, which
would make the redrawn mouth shake); a frame where detection fails borrows
its neighbours' box.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from anchor.face.portrait import (
    AvatarError,
    Box,
    Image,
    Portrait,
    default_image,
    detect_face,
    load_image,
    make_portrait,
)

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}


def read_video(path: Path, max_frames: int) -> list[Image]:
    """Up to ``max_frames`` RGB frames of a video file."""
    frames: list[Image] = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
                if len(frames) >= max_frames:
                    break
    except (av.FFmpegError, OSError) as exc:
        raise AvatarError(f"avatar video {path} could not be read: {exc}") from None
    if not frames:
        raise AvatarError(f"avatar video {path} has no video frames")
    return frames


def smooth_boxes(boxes: list[Box | None], window: int = 5) -> list[Box]:
    """Each box replaced by the mean of the detected boxes within ``window`` frames of it."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        raise AvatarError("no face found in any frame of the avatar video")
    arr = np.array([[b.x, b.y, b.w, b.h] if b else [np.nan] * 4 for b in boxes], dtype=np.float64)
    out = []
    half = window // 2
    for i in range(len(boxes)):
        near = arr[max(0, i - half) : i + half + 1]
        if np.isnan(near[:, 0]).all():
            near = arr[[min(found, key=lambda j: abs(j - i))]]
        x, y, w, h = np.nanmean(near, axis=0)
        out.append(Box(round(x), round(y), round(w), round(h)))
    return out


def video_portraits(frames: list[Image]) -> list[Portrait]:
    boxes: list[Box | None] = []
    for frame in frames:
        try:
            boxes.append(detect_face(frame))
        except AvatarError:
            boxes.append(None)
    return [make_portrait(f, b) for f, b in zip(frames, smooth_boxes(boxes), strict=True)]


def load_avatar(path: Path | None, *, max_frames: int = 250) -> list[Portrait]:
    """The portraits of an avatar file (one for an image); the bundled portrait when ``path`` is None."""
    if path is None:
        return [make_portrait(default_image())]
    if not path.is_file():
        raise AvatarError(f"avatar {path} does not exist")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return video_portraits(read_video(path, max_frames))
    return [make_portrait(load_image(path))]
