"""The talking-face data: the default animator drives the default portrait over the teacher's speech.

Per speech shard, ``face/shard-NNNNN.npz`` holds, at 25 fps:

- ``crops`` uint8 ``[frames, 96, 96, 3]`` BGR: the animator's frames cut and
  scaled exactly as the Wav2Lip driver cuts them (``wav2lip_crop``);
- ``mel`` float16 ``[80, mel frames]``: Wav2Lip's own mel of the same speech at
  16 kHz (``mel_offsets`` per sentence, 80 frames a second), from which a
  video frame's 16-frame window is sliced at training time;
- ``frame_offsets``: where each sentence's frames start.

``face/reference.npy`` is the portrait's own crop: the reference frame the
driver feeds at run time. Frame ``i`` of a sentence is what the live
animator draws for that frame, one frame of lookahead included.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from anchor.face.animator import MouthRenderer, MouthTrack
from anchor.face.portrait import Portrait, default_image, make_portrait
from anchor.face.wav2lip_driver import wav2lip_crop
from anchor.speech.resample import resample
from anchor.train.speech_data import RATE, SpeechShard, speech_shards
from anchor.train.workers import in_workers
from engines.face.wav2lip import FACE_SIZE, melspectrogram

FPS = 25
AUDIO_RATE = 16000
STEP = AUDIO_RATE // FPS

_portrait: Portrait | None = None


def crop_of(image: npt.NDArray[np.uint8], portrait: Portrait) -> npt.NDArray[np.uint8]:
    """The driver's 96x96 BGR crop of a rendered RGB frame."""
    b = wav2lip_crop(portrait)
    face = image[b.y : b.y + b.h, b.x : b.x + b.w, ::-1]
    return np.asarray(cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def animate(audio16k: npt.NDArray[np.float32], portrait: Portrait) -> npt.NDArray[np.uint8]:
    """The animator's crops for one sentence, one per 40 ms frame (the last frame's audio zero-padded)."""
    frames = -(-len(audio16k) // STEP)
    padded = np.zeros((frames + 1) * STEP, dtype=np.float32)
    padded[: len(audio16k)] = audio16k
    track, renderer = MouthTrack(), MouthRenderer(portrait)
    crops = []
    for k in range(frames + 1):
        shape = track.push(padded[k * STEP : (k + 1) * STEP])
        if shape is not None:
            crops.append(crop_of(renderer.render(shape), portrait))
    last = track.finish()
    assert last is not None
    crops.append(crop_of(renderer.render(last), portrait))
    return np.stack(crops[:frames])


def _init() -> None:
    global _portrait
    if multiprocessing.parent_process() is not None:
        cv2.setNumThreads(1)  # one warp per worker process; the caller's own setting is left alone
    _portrait = make_portrait(default_image())


def _shard(job: tuple[Path, Path]) -> Path:
    source, path = job
    assert _portrait is not None
    speech = SpeechShard(source)
    crops, mels = [], []
    for i in range(len(speech)):
        audio = resample(speech.audio_of(i), RATE, AUDIO_RATE)
        crops.append(animate(audio, _portrait))
        mels.append(melspectrogram(audio).astype(np.float16))
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        crops=np.concatenate(crops),
        frame_offsets=np.concatenate([[0], np.cumsum([len(c) for c in crops])]).astype(np.int64),
        mel=np.concatenate(mels, axis=1),
        mel_offsets=np.concatenate([[0], np.cumsum([m.shape[1] for m in mels])]).astype(np.int64),
    )
    tmp.replace(path)
    return path


def render_faces(data: Path, *, shards: int, workers: int | None = None) -> list[Path]:
    """Face shards for the first ``shards`` speech shards (missing ones only); return them all."""
    out = data / "face"
    out.mkdir(parents=True, exist_ok=True)
    portrait = make_portrait(default_image())
    np.save(out / "reference.npy", crop_of(portrait.image, portrait))
    jobs = [(s, out / s.name) for s in speech_shards(data)[:shards]]
    todo = [j for j in jobs if not j[1].is_file()]
    workers = workers or max(1, min(len(todo), os.cpu_count() or 1))
    if todo:
        for _ in tqdm(in_workers(_shard, todo, workers, _init, ()), total=len(todo), desc="face"):
            pass
    return [j[1] for j in jobs]
