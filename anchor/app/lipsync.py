"""``anchor lipsync``: a WAV file and an avatar into a talking-head MP4 (H.264 + AAC, in sync).

The same face stage as live sessions, fed with the file's audio in 20 ms
chunks; frames are written as they come, so memory stays flat for long files.
An image avatar also gets the live idle life (blinks, sway, breathing); a
video avatar keeps its own motion. File reading, face detection and encoding
run on worker threads, one call at a time, so frames stay in order.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anchor.app.offline import read_wav, run_stages
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, VideoFrame
from anchor.core.runtime import Runtime
from anchor.face.avatar import load_avatar
from anchor.face.contact_sheet import mouth_box, mouth_crop, write_contact_sheet
from anchor.face.drivers import DriverName, face_driver
from anchor.face.face_stage import FaceStage
from anchor.face.look import PortraitLook
from anchor.face.portrait import Image
from streams.mp4 import MediaWriter


@dataclass(frozen=True)
class LipsyncResult:
    frames: int
    audio_s: float
    video_s: float
    driver: str


async def lipsync(
    settings: AnchorSettings,
    audio_path: Path,
    out: Path,
    *,
    avatar: Path | None,
    driver_name: DriverName,
    contact_sheet: Path | None = None,
) -> LipsyncResult:
    """``audio_path`` onto ``avatar`` into ``out``; driver ``animator``, ``gan`` (ours) or ``wav2lip``.

    With ``contact_sheet``, also a PNG of the mouth over time (``anchor.face.contact_sheet``).
    """
    audio, rate = await asyncio.to_thread(read_wav, audio_path)
    mono = audio.mean(axis=1).astype(np.float32)
    if len(mono) == 0:
        raise ValueError(f"{audio_path} holds no audio")
    portraits = await asyncio.to_thread(load_avatar, avatar)
    driver = face_driver(driver_name, *portraits)
    look = PortraitLook(portraits[0]) if len(portraits) == 1 else None
    fps = settings.media.fps
    step = rate // 50
    chunks: list[Frame] = [
        AudioChunk(pcm=mono[i : i + step], sample_rate=rate, pts=i, utterance_id="lipsync")
        for i in range(0, len(mono), step)
    ]
    chunks.append(EndOfUtterance(utterance_id="lipsync"))
    height, width = portraits[0].image.shape[:2]
    written = 0
    box = mouth_box(portraits[0])
    crops: list[Image] = []
    with MediaWriter(
        out, width=width - width % 2, height=height - height % 2, fps=fps, sample_rate=rate
    ) as writer:
        async with Runtime(settings) as runtime:
            async for frame in run_stages(runtime, [FaceStage(driver, fps=fps)], chunks):
                if isinstance(frame, VideoFrame):
                    image = frame.image if look is None else look.finish(frame.image, frame.index / fps)
                    even = np.ascontiguousarray(image[: height - height % 2, : width - width % 2])
                    await asyncio.to_thread(writer.add_video, even)  # x264 encoding: off the loop
                    written += 1
                    if contact_sheet is not None:
                        crops.append(mouth_crop(image, box))
        await asyncio.to_thread(writer.add_audio, mono)
        video_s, audio_s = writer.seconds
    expected = math.ceil(len(mono) * fps / rate)
    if written != expected:
        raise RuntimeError(f"lipsync rendered {written} frames for {expected} frames of audio")
    if contact_sheet is not None:
        title = f"{audio_path.name}: {driver_name} face, {len(mono) / rate:.1f} s"
        await asyncio.to_thread(write_contact_sheet, contact_sheet, crops, mono, rate, fps, title=title)
    return LipsyncResult(frames=written, audio_s=audio_s, video_s=video_s, driver=driver_name)
