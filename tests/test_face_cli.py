"""``anchor lipsync``: image and video avatars, the animator and Wav2Lip, an MP4 in sync, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from anchor.app.cli import main
from anchor.app.offline import write_wav
from anchor.face.avatar import load_avatar, smooth_tracks
from anchor.face.portrait import default_image
from engines.face.wav2lip import Wav2Lip
from streams.mp4 import MediaWriter


def speech_like(seconds: float, rate: int = 22050) -> np.ndarray:
    """Syllables: a buzzy 140 Hz voice, 4 bursts a second."""
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sign(np.sin(2 * np.pi * 140 * t)) * 0.2 + 0.1 * np.sin(2 * np.pi * 700 * t)
    return (voice * np.clip(np.sin(2 * np.pi * 4 * t), 0, None)).astype(np.float32)


def probe(path: Path) -> dict[str, tuple[str, float, float, int]]:
    """Per stream type: codec, rate, duration in seconds and decoded frames."""
    out = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            rate = float(stream.average_rate) if stream.type == "video" else float(stream.sample_rate)
            frames = sum(1 for _ in container.decode(stream))
            container.seek(0)
            out[stream.type] = (
                stream.codec_context.name,
                rate,
                float(stream.duration * stream.time_base),
                frames,
            )
    return out


@pytest.mark.parametrize("face", [None, "animator"])
def test_lipsync_writes_h264_and_aac_in_sync(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], face: str | None
) -> None:
    write_wav(tmp_path / "talk.wav", speech_like(2.0), 22050)
    chosen = ["--face", face] if face else []
    assert main(["lipsync", str(tmp_path / "talk.wav"), "-o", str(tmp_path / "out.mp4"), *chosen]) == 0
    out = capsys.readouterr().out
    assert "50 frames" in out and f"with the {face or 'gan'} face" in out, out
    streams = probe(tmp_path / "out.mp4")
    codec, fps, video_s, frames = streams["video"]
    assert (codec, fps, frames) == ("h264", 25.0, 50)
    codec, rate, audio_s, _ = streams["audio"]
    assert (codec, rate) == ("aac", 22050.0)
    assert abs(video_s - audio_s) < 0.04, "audio and video end together (within a frame)"


def test_a_video_avatar_loops_with_tracked_landmarks_and_wav2lip_weights(tmp_path: Path) -> None:
    still = default_image()
    with MediaWriter(tmp_path / "avatar.mp4", width=512, height=512, fps=25, sample_rate=16000) as writer:
        for k in range(12):  # the head drifts right by a pixel a frame
            writer.add_video(np.roll(still, k, axis=1))
        writer.add_audio(np.zeros(8000, dtype=np.float32))
    portraits = load_avatar(tmp_path / "avatar.mp4")
    assert len(portraits) == 12
    xs = [float(p.landmarks[30, 0]) for p in portraits]  # the nose tip
    assert 9 <= xs[-1] - xs[0] <= 13 and max(np.diff(xs)) <= 2.5, "landmarks follow the face, without jumps"
    torch.manual_seed(0)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in Wav2Lip().state_dict().items()}}, tmp_path / "w.pth"
    )
    write_wav(tmp_path / "talk.wav", speech_like(1.0, 16000), 16000)
    args = ["lipsync", str(tmp_path / "talk.wav"), "--avatar", str(tmp_path / "avatar.mp4")]
    assert main([*args, "--checkpoint", str(tmp_path / "w.pth"), "-o", str(tmp_path / "out.mp4")]) == 0
    assert probe(tmp_path / "out.mp4")["video"][3] == math.ceil(1.0 * 25)


def test_landmark_smoothing_averages_neighbouring_frames() -> None:
    tracks = [np.full((68, 2), float(k), dtype=np.float32) for k in (0, 10, 2, 3, 4)]
    smoothed = smooth_tracks(tracks)
    assert smoothed[0][0, 0] == pytest.approx(4.0) and smoothed[2][0, 0] == pytest.approx(3.8)


def test_bad_avatar_or_audio_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_wav(tmp_path / "talk.wav", speech_like(0.5), 22050)
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, dtype=np.uint8))
    assert (
        main(["lipsync", str(tmp_path / "talk.wav"), "--avatar", str(blank), "-o", str(tmp_path / "o.mp4")])
        == 2
    )
    assert "no face found in the avatar image (300x200)" in capsys.readouterr().err
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    assert main(["lipsync", str(tmp_path / "bad.wav"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "bad.wav" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.slow
def test_bench_face_reports_speed_sync_and_likeness(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "face", "--json", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["rig"]) == {"astronaut", "grace_hopper"}
    assert all(r["fps"] > 0 and r["threads"] == 1 for r in result["rig"].values())
    assert result["mouth_gan"]["ms_per_audio_second"]["p50"] > 0
    assert set(result["first_frame"]) == {"gan", "animator", "wav2lip"}
    gan = result["first_frame"]["gan"]
    assert gan["first_frame_ms"]["p50"] >= gan["lookahead_ms"]
    assert {g["backend"] for g in result["wav2lip_generator"]} == {"torch", "onnxruntime"}
    assert len(result["quality"]) == 2 * 4, "two portraits, Piper and three espeak-ng voices"
    for scores in result["quality"].values():
        assert abs(scores["lipsync"]["lag_frames"]) <= 1 and scores["lipsync"]["correlation"] >= 0.6
        assert scores["ssim_above_lip_min"] >= 0.9 and scores["mouth_sharpness_ratio"] >= 0.6


def test_lipsync_draws_a_contact_sheet(tmp_path: Path) -> None:
    write_wav(tmp_path / "talk.wav", speech_like(1.5), 22050)
    sheet = tmp_path / "sheet.png"
    args = [
        "lipsync",
        str(tmp_path / "talk.wav"),
        "-o",
        str(tmp_path / "out.mp4"),
        "--contact-sheet",
        str(sheet),
    ]
    assert main(args) == 0
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 800
