"""The default face: lip sync measured from pixels, frame timing, no seams, idle life, live sessions."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest

from anchor.app.offline import join_audio, render_text, run_stages
from anchor.bench.judge import MouthJudge
from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, VideoFrame
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.face.animator import mouth_opening
from anchor.face.face_stage import AnimatorDriver, FaceStage
from anchor.face.look import PortraitLook, blink_closure
from anchor.face.mouth import MouthShape
from anchor.face.portrait import AvatarError, Portrait, default_image, make_portrait
from anchor.face.rig import MouthRig
from anchor.testing.fakes import FakeResponder, FakeTTS
from anchor.testing.quality import best_lag
from tests.helpers import next_event, recording

NEWS = (
    "Good evening. The central bank raised interest rates by a quarter point on Tuesday, surprising markets."
)


@pytest.fixture(scope="module")
def portrait() -> Portrait:
    return make_portrait(default_image())


@pytest.fixture(scope="module")
def spoken() -> list[AudioChunk]:
    async def render() -> list[AudioChunk]:
        async with Runtime(AnchorSettings()) as rt:
            return await render_text(rt, NEWS)

    return asyncio.run(render())


async def animate(portrait: Portrait, chunks: list[AudioChunk]) -> list[VideoFrame]:
    frames: list[Frame] = [*chunks, EndOfUtterance(utterance_id=chunks[0].utterance_id)]
    async with Runtime(AnchorSettings()) as rt:
        stage = FaceStage(AnimatorDriver(MouthRig(portrait)))
        return [f async for f in run_stages(rt, [stage], frames) if isinstance(f, VideoFrame)]


async def test_mouth_follows_the_speech_within_a_frame(portrait: Portrait, spoken: list[AudioChunk]) -> None:
    frames = await animate(portrait, spoken)
    audio, sr = join_audio(spoken), spoken[0].sample_rate
    assert len(frames) == math.ceil(len(audio) * 25 / sr)
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(f.pts == f.index * sr // 25 and f.image.shape == portrait.image.shape for f in frames)
    # MediaPipe's face mesh, not our landmarks; the portrait itself last, for its closed mouth.
    *judged, rest = MouthJudge().openings([*(f.image for f in frames), portrait.image])
    opening = np.asarray(judged)
    step = sr // 25
    envelope = np.array([np.sqrt(np.mean(audio[i * step : (i + 1) * step] ** 2)) for i in range(len(frames))])
    lag, correlation = best_lag(opening, envelope)
    assert correlation >= 0.6 and abs(lag) <= 1, (lag, correlation)
    assert opening.max() > rest + 0.06 and opening[-1] < rest + 0.02, (
        "it opens while speaking, closes at the end"
    )


def test_shapes_render_distinctly_and_closed_is_the_portrait(portrait: Portrait) -> None:
    renderer = MouthRig(portrait)
    assert renderer.render(MouthShape()) is portrait.image
    wide, round_ = renderer.render(MouthShape(0.5, 0.8, 0.0)), renderer.render(MouthShape(0.5, -0.5, 0.9))
    assert mouth_opening(renderer.render(MouthShape(1.0)), portrait) > mouth_opening(
        renderer.render(MouthShape(0.3)), portrait
    )
    assert np.abs(wide.astype(int) - round_.astype(int)).sum() > 0


def test_the_warped_region_leaves_no_seam(portrait: Portrait) -> None:
    renderer = MouthRig(portrait)
    frame = renderer.render(MouthShape(1.0, 1.0, 0.0)).astype(np.int32)
    still = portrait.image.astype(np.int32)
    y0, y1, x0, x1 = renderer.y0, renderer.y1, renderer.x0, renderer.x1
    # Across each border line of the warped region the step is what the untouched portrait has there.
    pairs = (
        (frame[y0:y1, x0 - 1] - frame[y0:y1, x0], still[y0:y1, x0 - 1] - still[y0:y1, x0]),
        (frame[y0:y1, x1 - 1] - frame[y0:y1, x1], still[y0:y1, x1 - 1] - still[y0:y1, x1]),
        (frame[y0 - 1, x0:x1] - frame[y0, x0:x1], still[y0 - 1, x0:x1] - still[y0, x0:x1]),
        (frame[y1 - 1, x0:x1] - frame[y1, x0:x1], still[y1 - 1, x0:x1] - still[y1, x0:x1]),
    )
    for across, before in pairs:
        assert np.abs(across).mean() <= np.abs(before).mean() + 0.5


def test_idle_life_blinks_sways_and_fades_back(portrait: Portrait) -> None:
    look = PortraitLook(portrait)
    times = np.arange(0, 12, 1 / 25)
    closures = [blink_closure(t, look.blink_onsets) for t in times]
    blinks = sum(1 for a, b in itertools.pairwise(closures) if a == 0 and b > 0)
    assert 2 <= blinks <= 8, "people blink every 2-6 s"
    frames = [look.idle_frame(t).astype(np.int32) for t in times[:50]]
    steps = [np.abs(a - b).mean() for a, b in itertools.pairwise(frames)]
    assert 0 < max(steps) < 6, "the head moves, smoothly"
    eye = portrait.eyes[0]
    shut = next(t for t in times if blink_closure(t, look.blink_onsets) > 0.9)
    still = PortraitLook(portrait, motion=0)
    region = (slice(eye.y, eye.y + eye.h), slice(eye.x, eye.x + eye.w))
    assert np.abs(still.idle_frame(shut)[region].astype(int) - portrait.image[region]).mean() > 3
    spoken = MouthRig(portrait).render(MouthShape(1.0))
    still.finish(spoken, 20.0)
    first_idle = still.idle_frame(20.04).astype(np.int32)
    d_spoken = np.abs(first_idle - spoken).mean()
    d_portrait = np.abs(first_idle - portrait.image).mean()
    assert d_spoken > 0 and d_portrait > 0, "the first idle frame after speech is between the two"
    for k in range(10):
        last = still.idle_frame(20.08 + k / 25)
    assert np.array_equal(last, portrait.image)


def test_an_image_without_a_face_is_refused() -> None:
    with pytest.raises(AvatarError, match=r"no face found in the avatar image \(256x128\)"):
        make_portrait(np.full((128, 256, 3), 200, dtype=np.uint8))
    with pytest.raises(AvatarError, match="RGB uint8"):
        make_portrait(np.zeros((64, 64), dtype=np.uint8))


async def test_a_live_session_shows_the_talking_portrait(portrait: Portrait) -> None:
    settings = AnchorSettings(media={"width": 512, "height": 512})  # type: ignore[arg-type]
    tts = FakeTTS("tts", ms_per_word=200)
    face = FaceStage(AnimatorDriver(MouthRig(portrait)))
    graph = Graph().chain(FakeResponder("responder"), tts).link(tts, AUDIO_OUT)
    graph.add(face).link(tts, face).link(face, VIDEO_OUT)
    async with Runtime(settings) as rt:
        session = await rt.open_session(graph, look=PortraitLook(portrait))
        events = session.events()
        async with recording(session, video_frames=1000) as tape:
            await asyncio.sleep(0.2)
            uid = await session.say("one two three four")
            await next_event(events, "utterance_finished", uid)
            await asyncio.sleep(0.2)
    spoken = tape.video_of(uid)
    assert len(spoken) >= 15 and all(v.image.shape == (512, 512, 3) for v in tape.video)
    idle = [v for v in tape.video if not v.utterance_id]
    assert idle and idle[0].pts < spoken[0].pts < spoken[-1].pts < idle[-1].pts
    pts = [v.pts for v in tape.video]
    assert pts == sorted(pts), "one continuous video clock across idle and speech"
