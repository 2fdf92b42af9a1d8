"""``anchor bench face``: frames per second per driver and backend, first-frame latency, lip-sync lag.

- ``animator``: the default driver on one thread (audio analysis, mouth warp
  and the edge's idle look at 512x512 for every frame): frames/s and ms per frame.
- ``wav2lip``: the generator on each CPU backend, per batch size (random
  weights cost the same as trained ones), plus the paste-back per frame.
- ``first_frame_ms``: audio fed in real time as 20 ms chunks; from the first
  chunk to the first video frame. It includes waiting for the driver's
  lookahead (``lookahead_ms``), which is the floor.
- ``lipsync``: correlation of the mouth opening measured from the rendered
  pixels with the audio envelope, and the lag (frames) where it peaks.
- ``face_gan``: our trained face GAN (shipped weights): the same lip-sync
  measure, and frames/s on one core, 96x96 crops pasted into the portrait.
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

from anchor.bench.engines import bench_engine
from anchor.config import AnchorSettings
from anchor.face.animator import MouthRenderer, MouthTrack, mouth_opening
from anchor.face.look import PortraitLook
from anchor.face.portrait import Portrait, default_image, make_portrait
from anchor.face.stage import RATE, AnimatorDriver, FaceDriver, FaceStage
from anchor.face.wav2lip_driver import Wav2LipDriver
from anchor.frames import AudioChunk, EndOfUtterance, Frame, VideoFrame
from anchor.offline import join_audio, render_text, run_stages
from anchor.quality import best_lag
from anchor.runtime import Runtime
from anchor.speech.resample import resample
from anchor.stage import StageContext
from anchor.stats import summarize
from engines.face.wav2lip import FACE_GAN, Wav2Lip, load_wav2lip, mel_windows, melspectrogram, wav2lip_spec
from engines.weights import WeightsSource

TEXT = (
    "Good evening. The central bank raised interest rates by a quarter point on Tuesday, surprising markets."
)


def _animator_one_core(portrait: Portrait, audio16k: npt.NDArray[np.float32], fps: int) -> dict[str, Any]:
    renderer, look, track = MouthRenderer(portrait), PortraitLook(portrait), MouthTrack()
    step = RATE // fps
    times = []
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core: OpenCV would otherwise spread a warp over every core
    try:
        for i in range(len(audio16k) // step):
            began = time.perf_counter()
            shape = track.push(audio16k[i * step : (i + 1) * step])
            image = renderer.render(shape) if shape is not None else portrait.image
            look.finish(image, i / fps)
            times.append((time.perf_counter() - began) * 1000)
    finally:
        cv2.setNumThreads(threads)
    stats = summarize(times[fps:])  # the first second warms caches up
    return {"frame_ms": stats, "fps": round(1000 / float(stats["mean"]), 1), "threads": 1}


def _lipsync(
    video: list[VideoFrame],
    portrait: Portrait,
    audio: npt.NDArray[np.float32],
    rate: int,
    fps: int,
    driver: str,
) -> dict[str, Any]:
    opening = np.array([mouth_opening(v.image, portrait) for v in video])
    step = rate // fps
    envelope = np.array([np.sqrt(np.mean(audio[i * step : (i + 1) * step] ** 2)) for i in range(len(video))])
    lag, correlation = best_lag(opening, envelope)
    return {"driver": driver, "lag_frames": lag, "correlation": round(correlation, 3)}


def _gan_one_core(portrait: Portrait, audio16k: npt.NDArray[np.float32], fps: int) -> dict[str, Any]:
    """Our face GAN on one thread, one frame at a time: mel window, generator, paste into the portrait."""
    generator = load_wav2lip(WeightsSource.project("face_gan.pth").resolve())
    driver = Wav2LipDriver(portrait)
    count = len(audio16k) // (RATE // fps)
    windows = mel_windows(melspectrogram(audio16k), 0, count, float(fps))
    faces = torch.from_numpy(driver.crops[0].faces)
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    times = []
    try:
        with torch.inference_mode():
            for i in range(count):
                began = time.perf_counter()
                face = generator(torch.from_numpy(windows[i : i + 1]), faces).numpy()
                driver.compose(face)
                times.append((time.perf_counter() - began) * 1000)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    stats = summarize(times[fps:])
    return {
        "frame_ms": stats,
        "fps": round(1000 / float(stats["mean"]), 1),
        "threads": 1,
        "width": generator.width,
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


async def bench_face(
    settings: AnchorSettings, *, rounds: int = 5, batches: tuple[int, ...] = (1, 8)
) -> dict[str, Any]:
    fps = settings.media.fps
    portrait = make_portrait(default_image())
    result: dict[str, Any] = {"bench": "face", "size": list(portrait.image.shape[:2]), "fps_target": fps}
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
            audio, rate = join_audio(spoken), spoken[0].sample_rate
            audio16k = resample(audio, rate, RATE)
            result["animator"] = await asyncio.to_thread(_animator_one_core, portrait, audio16k, fps)
            drivers: dict[str, FaceDriver] = {
                "animator": AnimatorDriver(MouthRenderer(portrait)),
                "wav2lip": Wav2LipDriver(portrait),
            }
            first: dict[str, Any] = {}
            for name, driver in drivers.items():
                times = [
                    await _first_frame_ms(
                        runtime, FaceStage(driver, fps=fps), _split(audio, rate, f"{name}{i}")
                    )
                    for i in range(rounds)
                ]
                first[name] = {
                    "first_frame_ms": summarize(times),
                    "lookahead_ms": round(1000 * driver.lookahead_samples(Fraction(fps)) / RATE, 1),
                }
            result["first_frame"] = first
            frames: list[Frame] = [*_split(audio, rate, "sync"), EndOfUtterance(utterance_id="sync")]
            video = [
                f
                async for f in run_stages(
                    runtime, [FaceStage(AnimatorDriver(MouthRenderer(portrait)), fps=fps)], frames
                )
                if isinstance(f, VideoFrame)
            ]
            result["lipsync"] = _lipsync(video, portrait, audio, rate, fps, "animator")
            gan = FaceStage(Wav2LipDriver(portrait, engine=FACE_GAN), fps=fps)
            frames = [*_split(audio, rate, "gan"), EndOfUtterance(utterance_id="gan")]
            video = [f async for f in run_stages(runtime, [gan], frames) if isinstance(f, VideoFrame)]
            result["face_gan"] = {
                "lipsync": _lipsync(video, portrait, audio, rate, fps, "gan"),
                **await asyncio.to_thread(_gan_one_core, portrait, audio16k, fps),
            }
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
