"""The default face: landmarks on any portrait, the mouth rig, visemes, the mouth GAN, judged from pixels."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from anchor.app.offline import join_audio, render_text, run_stages
from anchor.bench.espeak import espeak
from anchor.bench.face_measures import identity, lip_sync
from anchor.bench.judge import MouthJudge
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, Phonemes, TextDelta, VideoFrame
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from anchor.face.face_stage import RATE, FaceStage
from anchor.face.landmarks import FaceFound, check_pose, detect_landmarks
from anchor.face.mouth import CLOSED, MouthShape
from anchor.face.mouth_driver import MouthGanDriver
from anchor.face.portrait import AvatarError, Portrait, default_image, fit, make_portrait, second_image
from anchor.face.rig import INNER_PAIRS, MouthRig
from anchor.face.visemes import mouth_track, timed_phonemes
from anchor.speech.voices import Voice
from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.errors import WeightsError
from engines.export import export_onnx
from engines.face.mouth_gan import (
    MAX_HISTORY_SAMPLES,
    MouthGenerator,
    frame_windows,
    history_samples,
    load_mouth_gan,
    lookahead_samples,
    mouth_gan_spec,
)
from engines.spec import relative_error
from engines.weights import WeightsSource

SENTENCE = (
    "Good evening. The central bank raised interest rates by a quarter point on Tuesday, surprising markets "
    "that had expected them to hold until the spring."
)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {"astronaut": default_image(), "grace_hopper": fit(second_image(), (512, 512))}


@pytest.fixture(scope="module")
def found(photos: dict[str, np.ndarray]) -> dict[str, FaceFound]:
    return {name: detect_landmarks(photo) for name, photo in photos.items()}


@pytest.fixture(scope="module")
def portraits(photos: dict[str, np.ndarray], found: dict[str, FaceFound]) -> dict[str, Portrait]:
    return {name: make_portrait(photos[name], found[name]) for name in photos}


@pytest.fixture(scope="module")
def judge() -> MouthJudge:
    return MouthJudge()


def test_landmarks_sit_on_both_portraits(found: dict[str, FaceFound]) -> None:
    for face in found.values():
        x, y, w, h = face.box
        p = face.points
        assert p.shape == (68, 2)
        inside = (
            (p[:, 0] > x - 0.2 * w)
            & (p[:, 0] < x + 1.2 * w)
            & (p[:, 1] > y - 0.3 * h)
            & (p[:, 1] < y + 1.3 * h)
        )
        assert inside.all()
        assert p[30, 1] < p[51, 1] < p[57, 1] < p[8, 1], "nose, upper lip, lower lip, chin, top to bottom"
        assert p[36, 0] < p[30, 0] < p[45, 0], "the nose between the eyes"


def test_unusable_portraits_are_refused_with_the_reason(photos: dict[str, np.ndarray]) -> None:
    astronaut = photos["astronaut"]
    with pytest.raises(AvatarError, match="no face found"):
        detect_landmarks(np.full((200, 300, 3), 128, dtype=np.uint8))
    with pytest.raises(AvatarError, match="2 faces found"):
        detect_landmarks(np.concatenate([astronaut, astronaut], axis=1))
    with pytest.raises(AvatarError, match="too small to animate"):
        detect_landmarks(fit(astronaut, (150, 150)))
    points = detect_landmarks(astronaut).points.copy()
    points[30, 0] += 0.3 * float(points[16, 0] - points[0, 0])  # the nose far to one side
    with pytest.raises(AvatarError, match="turned too far"):
        check_pose(points, "test")


def test_an_open_mouthed_photo_gets_a_closed_rest_pose(
    photos: dict[str, np.ndarray], found: dict[str, FaceFound], portraits: dict[str, Portrait]
) -> None:
    astronaut = portraits["astronaut"]
    width = float(astronaut.landmarks[54, 0] - astronaut.landmarks[48, 0])
    gaps = [
        float(found["astronaut"].points[lo, 1] - found["astronaut"].points[up, 1]) for up, lo in INNER_PAIRS
    ]
    assert np.mean(gaps) > 0.1 * width, "the bundled photo smiles with teeth"
    rest = [float(astronaut.landmarks[lo, 1] - astronaut.landmarks[up, 1]) for up, lo in INNER_PAIRS]
    assert max(abs(g) for g in rest) < 0.02 * width
    assert not np.array_equal(astronaut.image, photos["astronaut"]), "closed by the warp"
    assert astronaut.teeth is not None and min(astronaut.teeth) > 150, "her own teeth's colour is kept"
    assert np.allclose(MouthRig(astronaut).teeth, astronaut.teeth)
    hopper = portraits["grace_hopper"]
    assert np.array_equal(hopper.image, photos["grace_hopper"]), "a closed mouth is left as it is"
    assert hopper.teeth is None
    assert MouthRig(hopper).render(CLOSED) is hopper.image


def test_the_mouth_opens_rounds_and_closes_as_the_judge_sees_it(
    portraits: dict[str, Portrait], judge: MouthJudge
) -> None:
    for portrait in portraits.values():
        rig = MouthRig(portrait)
        shapes = [CLOSED, MouthShape(0.4), MouthShape(1.0), MouthShape(0.3, -0.5, 1.0), MouthShape(0.3, 1.0)]
        frames = [rig.render(s) for s in shapes]
        (closed, _), (half, _), (wide, _), (_, rounded), (_, spread) = judge.measure(frames)
        assert closed < 0.08 and 2 * closed < half < wide, (closed, half, wide)
        assert rounded < spread, "rounded lips are narrower than spread ones, as the judge sees them"
        top = int(portrait.landmarks[31:36, 1].min()) - 1
        for frame in frames:
            assert np.array_equal(frame[:top], portrait.image[:top]), (
                "above the nostrils: the photo's own pixels"
            )


def test_visemes_close_on_m_b_p_open_on_a_and_round_on_u() -> None:
    #            m     a     m     u     p
    symbols = ["^", "m", "_", "a", "_", "m", "_", "u", "_", "p", "$"]
    durations = [0.05, 0.08, 0.0, 0.15, 0.0, 0.08, 0.0, 0.15, 0.0, 0.08, 0.05]
    phonemes = timed_phonemes(symbols, durations)
    assert [p.symbol for p in phonemes] == ["^", "m", "a", "m", "u", "p", "$"]
    at = {p.symbol + str(i): (p.start + p.end) / 2 for i, p in enumerate(phonemes)}
    shapes = mouth_track(phonemes, list(at.values()))
    by = dict(zip(at, shapes, strict=True))
    assert by["m1"][0] == 0 and by["m3"][0] == 0 and by["p5"][0] == 0, "closures shut"
    assert by["a2"][0] > 0.6 and by["a2"][2] < 0.2, "an open, unrounded /a/"
    assert by["u4"][2] > 0.6 and by["u4"][1] < 0, "a rounded, narrow /u/"
    near_u = mouth_track(phonemes, [phonemes[3].end - 0.01])[0]
    assert near_u[2] > 0.2, "the m before u is already rounding (co-articulation)"


def test_streaming_windows_equal_whole_file_windows() -> None:
    wav = (np.random.default_rng(3).standard_normal(RATE * 3) * 0.1).astype(np.float32)
    whole = frame_windows(wav, 0, 0, 70, 25.0)
    history, lookahead = history_samples(25.0), lookahead_samples(25.0)
    assert all(history_samples(fps) <= MAX_HISTORY_SAMPLES for fps in (10.0, 25.0, 30.0, 60.0))
    for first, count in ((0, 1), (1, 8), (20, 8), (61, 8)):
        keep_from = max(0, first * 640 - history)
        heard = wav[keep_from : (first + count) * 640 + lookahead]
        got = frame_windows(heard, keep_from, first, count, 25.0)
        assert np.array_equal(got, whole[first : first + count]), (first, count)


def test_mouth_gan_loads_exports_and_rejects_foreign_checkpoints(tmp_path: Path) -> None:
    shipped = WeightsSource.project("mouth_gan.pt").resolve()
    model = load_mouth_gan(shipped)
    spec = mouth_gan_spec(WeightsSource.path(shipped))
    exported = export_onnx(spec, model, tmp_path / "mouth.onnx")
    for batch in (1, 7):
        inputs = spec.sample_inputs("opt", batch=batch)
        expected = TorchBackend(spec, model).run(inputs)["mouth"]
        got = OrtBackend(spec, exported.path).run(inputs)["mouth"]
        assert got.shape == (batch, 3)
        assert relative_error(got, expected) <= spec.rtol_fp32
    torch.save({"state_dict": MouthGenerator(64).state_dict()}, tmp_path / "no_config.pt")
    with pytest.raises(WeightsError, match="config\\['width'\\]"):
        load_mouth_gan(tmp_path / "no_config.pt")
    torch.save({"state_dict": MouthGenerator(64).state_dict(), "config": {"width": 96}}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match=r"bad\.pt"):
        load_mouth_gan(tmp_path / "bad.pt")


async def _render(portrait: Portrait, audio: np.ndarray) -> list[np.ndarray]:
    step = RATE // 50
    frames: list[Frame] = [
        AudioChunk(pcm=audio[i : i + step], sample_rate=RATE, pts=i, utterance_id="u")
        for i in range(0, len(audio), step)
    ]
    frames.append(EndOfUtterance(utterance_id="u"))
    async with Runtime(AnchorSettings()) as rt:
        stage = FaceStage(MouthGanDriver(portrait))
        return [f.image async for f in run_stages(rt, [stage], frames) if isinstance(f, VideoFrame)]


@pytest.fixture(scope="module")
def voices() -> dict[str, np.ndarray]:
    async def piper() -> np.ndarray:
        async with Runtime(AnchorSettings()) as rt:
            chunks = await render_text(rt, SENTENCE)
        return resample(join_audio(chunks), chunks[0].sample_rate, RATE)

    return {"piper": asyncio.run(piper()), "espeak": espeak(SENTENCE, 175, 50)}


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("voice", ["piper", "espeak"])
async def test_the_shipped_mouth_gan_lip_syncs_keeps_the_face_and_its_detail(
    name: str,
    voice: str,
    photos: dict[str, np.ndarray],
    found: dict[str, FaceFound],
    portraits: dict[str, Portrait],
    judge: MouthJudge,
    voices: dict[str, np.ndarray],
) -> None:
    """The gate: MediaPipe (not the rig's dlib) reads the lips; espeak-ng is a voice the GAN never heard."""
    audio = voices[voice]
    frames = await _render(portraits[name], audio)
    sync = lip_sync(judge.openings(frames), audio, RATE, 25)
    assert abs(sync["lag_frames"]) <= 1 and sync["correlation"] >= 0.6, sync
    likeness = identity(frames, photos[name], found[name])
    assert likeness["ssim_above_lip_min"] >= 0.9, likeness
    assert likeness["mouth_sharpness_ratio"] >= 0.6, likeness


@pytest.mark.parametrize("voice", [Voice("mel", "waveglow", 0.0), Voice("piper")], ids=["mel", "piper"])
async def test_the_anchors_own_voice_times_its_phonemes_and_the_mouth_follows_them(
    voice: Voice, portraits: dict[str, Portrait], judge: MouthJudge
) -> None:
    """Each voice sends its phonemes ahead of the audio: the mouth shuts on every m, b and p."""
    settings = AnchorSettings()
    frames: list[Frame] = [
        TextDelta(text="Maybe my mom bought a map.", utterance_id="u"),
        EndOfUtterance(utterance_id="u"),
    ]
    async with Runtime(settings) as rt:
        spoken = [f async for f in run_stages(rt, voice.stages(), frames)]
        face = FaceStage(MouthGanDriver(portraits["grace_hopper"]))
        out = spoken + [f async for f in run_stages(rt, [face], spoken)]
    timed = [f for f in out if isinstance(f, Phonemes)]
    video = [f for f in out if isinstance(f, VideoFrame)]
    audio = [f for f in out if isinstance(f, AudioChunk)]
    assert timed and video and audio
    seconds = sum(a.num_samples for a in audio) / audio[0].sample_rate
    assert timed[-1].bounds[-1] / timed[-1].sample_rate == pytest.approx(seconds, abs=0.05)
    closures = [
        (a + b) / 2 / f.sample_rate
        for f in timed
        for s, a, b in zip(f.symbols, f.bounds, f.bounds[1:], strict=False)
        if s in "mbp"
    ]
    assert len(closures) >= 4
    openings = judge.openings([v.image for v in video])
    shut = [openings[round(t * 25 - 0.5)] for t in closures]  # the frame whose middle is nearest
    assert max(shut) < 0.06 < float(np.percentile(openings, 90)), (shut, np.percentile(openings, 90))


def test_phoneme_frames_refuse_bounds_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="one bound more than symbols"):
        Phonemes(symbols=("m", "a"), bounds=(0, 10), sample_rate=22050)
    with pytest.raises(ValueError, match="non-decreasing"):
        Phonemes(symbols=("m", "a"), bounds=(0, 10, 5), sample_rate=22050)
    with pytest.raises(ValueError, match="sample_rate must be positive"):
        Phonemes(symbols=("m",), bounds=(0, 10), sample_rate=0)
