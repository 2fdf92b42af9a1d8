"""Avatars from files: an image, or a short video played in a forwards-backwards loop.

A video's face is found once, on its first frame; its landmarks are then
followed from frame to frame and smoothed over a few frames, so the mouth
rig of every frame sits on that frame's own lips.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from anchor.face.landmarks import FaceFound, Points, check_pose, detect_landmarks, track_landmarks
from anchor.face.portrait import AvatarError, Image, Portrait, default_image, load_image, make_portrait

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


def smooth_tracks(points: list[Points], window: int = 5) -> list[Points]:
    """Each frame's landmarks replaced by their mean over ``window`` frames (the predictor jitters by a pixel
    or two from frame to frame, which would make the redrawn mouth shimmer)."""
    stack = np.stack(points)
    half = window // 2
    return [stack[max(0, i - half) : i + half + 1].mean(axis=0) for i in range(len(points))]


def video_portraits(frames: list[Image]) -> list[Portrait]:
    """The first frame's face found by the detector, then followed frame by frame by the shape predictor."""
    first = detect_landmarks(frames[0], "the first frame of the avatar video")
    box = np.array(first.box, dtype=np.float32)
    tracks = [first.points]
    for k, frame in enumerate(frames[1:], start=1):
        moved = box.copy()
        moved[:2] += tracks[-1].mean(axis=0) - first.points.mean(axis=0)
        points = track_landmarks(frame, (int(moved[0]), int(moved[1]), int(moved[2]), int(moved[3])))
        check_pose(points, f"frame {k} of the avatar video")
        tracks.append(points)
    return [
        make_portrait(f, FaceFound(first.box, p)) for f, p in zip(frames, smooth_tracks(tracks), strict=True)
    ]


def load_avatar(path: Path | None, *, max_frames: int = 250) -> list[Portrait]:
    """The portraits of an avatar file (one for an image); the bundled portrait when ``path`` is None."""
    if path is None:
        return [make_portrait(default_image())]
    if not path.is_file():
        raise AvatarError(f"avatar {path} does not exist")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return video_portraits(read_video(path, max_frames))
    return [make_portrait(load_image(path))]
