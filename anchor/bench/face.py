"""``anchor bench face``: the default face's speed, lip sync and likeness; the other drivers' latency.

- ``rig``: the mouth rig plus the edge's idle look, one frame at a time on
  one thread, per portrait (the bundled one and Grace Hopper at 512x512):
  frames/s and ms per frame. Landmarks are found once per avatar, before.
- ``mouth_gan``: the GAN's compute per second of audio on one thread.
- ``quality``: per portrait and voice (Piper, espeak-ng at three speeds and
  pitches), lip sync judged by MediaPipe's face mesh (``anchor.bench.judge``)
  against the audio envelope, SSIM above the upper lip against the photo,
  and the mouth's sharpness against the photo's (``anchor.bench.face_measures``).
- ``first_frame``: audio fed in real time as 20 ms chunks; from the first
  chunk to the first video frame, per driver. It includes waiting for the
  driver's lookahead (``lookahead_ms``), which is the floor.
- ``wav2lip_generator``: a Wav2Lip-shaped generator (random weights cost the
  same) per CPU backend and batch, plus its paste-back per frame.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

from anchor.app.offline import join_audio, render_text, run_stages
from anchor.bench.engines import bench_engine
from anchor.bench.espeak import espeak
from anchor.bench.face_measures import identity, lip_sync
from anchor.bench.judge import MouthJudge
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, VideoFrame
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from anchor.core.stage import StageContext
from anchor.core.stats import summarize
from anchor.face.face_stage import RATE, AnimatorDriver, FaceDriver, FaceStage
from anchor.face.landmarks import detect_landmarks
from anchor.face.look import PortraitLook
from anchor.face.mouth import MouthShape
from anchor.face.mouth_driver import MouthGanDriver
from anchor.face.portrait import Image, Portrait, default_image, fit, make_portrait, second_image
from anchor.face.rig import MouthRig
from anchor.face.wav2lip_driver import Wav2LipDriver
from engines.face.mouth_gan import frame_windows, load_mouth_gan
from engines.face.wav2lip import Wav2Lip, wav2lip_spec
from engines.weights import WeightsSource

#: espeak-ng voices (words/min, pitch 0-99): a voice the mouth GAN never heard, at several speeds and pitches.
ESPEAK = ((140, 35), (175, 50), (210, 70))
TEXT = (
    "Good evening. The central bank raised interest rates by a quarter point on Tuesday, surprising markets."
)


def _rig_one_core(portrait: Portrait, shapes: npt.NDArray[np.float32], fps: int) -> dict[str, Any]:
    """The mouth rig and the edge's idle look at the portrait's size, one frame at a time on one thread."""
    rig, look = MouthRig(portrait), PortraitLook(portrait)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core: OpenCV would otherwise spread a warp over every core
    times = []
    try:
        for i, shape in enumerate(shapes):
            began = time.perf_counter()
            look.finish(rig.render(MouthShape.of(shape)), i / fps)
            times.append((time.perf_counter() - began) * 1000)
    finally:
        cv2.setNumThreads(threads)
    stats = summarize(times[fps:])  # the first second warms caches up
    return {"frame_ms": stats, "fps": round(1000 / float(stats["mean"]), 1), "threads": 1}


def _gan_cost(audio16k: npt.NDArray[np.float32], fps: int, rounds: int) -> dict[str, Any]:
    """The mouth GAN on one thread: ms of compute per second of audio (windows + generator, 25 a batch)."""
    model = load_mouth_gan(WeightsSource.project("mouth_gan.pt").resolve())
    count = len(audio16k) * fps // RATE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                began = time.perf_counter()
                for first in range(0, count, fps):
                    n = min(fps, count - first)
                    model(torch.from_numpy(frame_windows(audio16k, 0, first, n, float(fps))))
                times.append((time.perf_counter() - began) * 1000 / (len(audio16k) / RATE))
    finally:
        torch.set_num_threads(threads)
    return {
        "ms_per_audio_second": summarize(times),
        "threads": 1,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


async def _first_frame_ms(runtime: Runtime, stage: FaceStage, chunks: list[AudioChunk]) -> float:
    """Real-time feeding: 20 ms chunks at their own pace; first chunk in -> first frame out."""
    ctx = StageContext("bench-face", runtime.settings, runtime.executor, runtime.engines)
    await stage.start(ctx)
    try:
        began = time.perf_counter()
        for i, chunk in enumerate(chunks):
            if (delay := began + i * chunk.duration_ms / 1000 - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            async for out in stage.process(chunk):
                if isinstance(out, VideoFrame):
                    return (time.perf_counter() - began) * 1000
        return float("nan")
    finally:
        stage.on_cancel(frozenset({chunks[0].utterance_id}))
        await stage.stop()


def _split(audio: npt.NDArray[np.float32], rate: int, uid: str) -> list[AudioChunk]:
    step = rate // 50
    return [
        AudioChunk(pcm=audio[i : i + step], sample_rate=rate, pts=i, utterance_id=uid)
        for i in range(0, len(audio) - step + 1, step)
    ]


async def _spoken_frames(
    runtime: Runtime, driver: FaceDriver, audio: npt.NDArray[np.float32], rate: int, fps: int, uid: str
) -> list[Image]:
    frames: list[Frame] = [*_split(audio, rate, uid), EndOfUtterance(utterance_id=uid)]
    stage = FaceStage(driver, fps=fps)
    return [f.image async for f in run_stages(runtime, [stage], frames) if isinstance(f, VideoFrame)]


async def bench_face(
    settings: AnchorSettings, *, rounds: int = 5, batches: tuple[int, ...] = (1, 8)
) -> dict[str, Any]:
    fps = settings.media.fps
    photos = {"astronaut": default_image(), "grace_hopper": fit(second_image(), (512, 512))}
    found = {name: await asyncio.to_thread(detect_landmarks, photo) for name, photo in photos.items()}
    portraits = {name: make_portrait(photos[name], found[name]) for name in photos}
    portrait = portraits["astronaut"]
    result: dict[str, Any] = {"bench": "face", "size": list(portrait.image.shape[:2]), "fps_target": fps}
    judge = MouthJudge()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = Path(tmp) / "wav2lip_random.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in Wav2Lip().state_dict().items()}}, checkpoint)
        weights = {**settings.engines.weights, "wav2lip": checkpoint}
        settings = settings.model_copy(
            update={"engines": settings.engines.model_copy(update={"weights": weights})}
        )
        async with Runtime(settings) as runtime:
            spoken = await render_text(runtime, TEXT)
            piper, rate = join_audio(spoken), spoken[0].sample_rate
            voices = {
                "piper": resample(piper, rate, RATE),
                **{
                    f"espeak_s{speed}_p{pitch}": await asyncio.to_thread(espeak, TEXT, speed, pitch)
                    for speed, pitch in ESPEAK
                },
            }
            audio16k = voices["piper"]
            model = load_mouth_gan(WeightsSource.project("mouth_gan.pt").resolve())
            with torch.inference_mode():
                windows = frame_windows(audio16k, 0, 0, len(audio16k) * fps // RATE, float(fps))
                shapes = model(torch.from_numpy(windows)).numpy()
            result["rig"] = {
                name: await asyncio.to_thread(_rig_one_core, p, shapes, fps) for name, p in portraits.items()
            }
            result["mouth_gan"] = await asyncio.to_thread(_gan_cost, audio16k, fps, rounds)
            quality: dict[str, Any] = {}
            for name, p in portraits.items():
                for voice, audio in voices.items():
                    frames = await _spoken_frames(runtime, MouthGanDriver(p), audio, RATE, fps, name + voice)
                    openings = await asyncio.to_thread(judge.openings, frames)
                    quality[f"{name}/{voice}"] = {
                        "lipsync": lip_sync(openings, audio, RATE, fps),
                        **await asyncio.to_thread(identity, frames, photos[name], found[name]),
                    }
            result["quality"] = quality
            drivers: dict[str, FaceDriver] = {
                "gan": MouthGanDriver(portrait),
                "animator": AnimatorDriver(MouthRig(portrait)),
                "wav2lip": Wav2LipDriver(portrait),
            }
            first: dict[str, Any] = {}
            for name, driver in drivers.items():
                times = [
                    await _first_frame_ms(
                        runtime, FaceStage(driver, fps=fps), _split(piper, rate, f"{name}{i}")
                    )
                    for i in range(rounds)
                ]
                first[name] = {
                    "first_frame_ms": summarize(times),
                    "lookahead_ms": round(1000 * driver.lookahead_samples(Fraction(fps)) / RATE, 1),
                }
            result["first_frame"] = first
        spec = wav2lip_spec(WeightsSource.path(checkpoint))
        generator = []
        for backend in ("torch", "onnxruntime"):
            run = bench_engine(
                spec, settings.engines, batches=list(batches), backend=backend, iterations=rounds, warmup=1
            )
            generator.append(
                {
                    "backend": run["backend"],
                    "device": run["device"],
                    "precision": run["precision"],
                    "results": [
                        {"batch": r["batch"], "frames_per_s": r["items_per_s"], "latency_ms": r["latency_ms"]}
                        for r in run["results"]
                    ],
                }
            )
        result["wav2lip_generator"] = generator
        driver = Wav2LipDriver(portrait)
        faces = np.random.default_rng(0).uniform(0, 1, (8, 3, 96, 96)).astype(np.float32)
        began = time.perf_counter()
        for _ in range(rounds):
            driver.compose(faces)
        result["wav2lip_paste_ms_per_frame"] = round((time.perf_counter() - began) * 1000 / (8 * rounds), 3)
    result["torch_threads"] = torch.get_num_threads()
    return result
