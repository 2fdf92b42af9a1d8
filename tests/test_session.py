"""Graph and session semantics on real sessions with fake stages."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator

import numpy as np
import pytest

from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, Interrupt, TextDelta
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.stage import Stage
from anchor.testing.fakes import FakeFace, FakeResponder, FakeTTS, Faults
from tests.helpers import FAST, MS_PER_WORD, Tape, next_event, recording, speech_graph, words

FRAME = FAST.media.audio_frame_samples
WORD_SAMPLES = int(MS_PER_WORD * FAST.media.sample_rate / 1000)


def assert_contiguous(tape: Tape) -> None:
    pts = [a.pts for a in tape.audio]
    assert pts == list(range(pts[0], pts[0] + FRAME * len(pts), FRAME)), "audio pts must be gap-free"


def speech_samples(tape: Tape, uid: str) -> int:
    return sum(int(np.count_nonzero(a.pcm)) for a in tape.audio_of(uid))


class Collect(Stage):
    """Records every frame it sees, optionally slowly, and forwards it."""

    def __init__(self, name: str, delay_s: float = 0.0, accepts: tuple[type[Frame], ...] = (Frame,)) -> None:
        super().__init__(name)
        self.accepts = accepts
        self.seen: list[Frame] = []
        self.delay_s = delay_s

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if self.delay_s and isinstance(frame, TextDelta):
            await asyncio.sleep(self.delay_s)
        self.seen.append(frame)
        yield frame


async def test_frames_keep_their_order_through_the_graph() -> None:
    slow = Collect("slow", delay_s=0.002)
    tts = FakeTTS("tts", ms_per_word=MS_PER_WORD, faults=Faults(latency_s=0.001))
    graph = Graph().chain(FakeResponder("responder"), slow, tts).link(tts, AUDIO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        events = session.events()
        async with recording(session, audio_ms=10_000) as tape:
            uid = await session.say(words(12))
            await next_event(events, "utterance_finished", uid)
    texts = [f.text.strip() for f in slow.seen if isinstance(f, TextDelta)]
    assert texts == [f"w{i}" for i in range(12)]
    assert isinstance(slow.seen[-1], EndOfUtterance)
    speech = tape.audio_of(uid)
    pcm = np.concatenate([a.pcm for a in speech])
    expected = np.concatenate([tts._tone(f"w{i}", i * WORD_SAMPLES) for i in range(12)])
    start = int(np.flatnonzero(pcm)[0])
    np.testing.assert_array_equal(pcm[start - 1 : start - 1 + len(expected)], expected)


async def test_audio_back_pressure_holds_the_producer() -> None:
    async with Runtime(FAST) as rt:
        graph = speech_graph(face=False)
        session = await rt.open_session(graph)
        events = session.events()
        uid = await session.say(words(60))  # 2.4 s of audio, produced instantly
        await next_event(events, "audio_started", uid)
        tts = session.runner(graph.stages[1])
        capacity = FAST.graph.audio_channel_ms
        for _ in range(5):
            await asyncio.sleep(0.05)
            # The TTS is still mid-utterance: it is blocked on the full output channel.
            assert tts.working_on == uid
            assert session.pacer.audio.buffered_ms <= capacity
        assert session.pacer.audio.buffered_ms >= capacity - MS_PER_WORD
        assert len(tts.inbox) > 0, "the responder's text waits behind the blocked TTS"


async def test_video_overflow_drops_the_oldest_and_counts() -> None:
    # One 1.6 s audio chunk makes the face render 40 frames at once: more than
    # the 1.2 s video budget, so the oldest are dropped (and counted), never blocked on.
    tts = FakeTTS("tts", ms_per_word=1600)
    face = FakeFace("face", size=(32, 32))
    graph = Graph().chain(FakeResponder("responder"), tts).link(tts, AUDIO_OUT)
    graph.add(face).link(tts, face).link(face, VIDEO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        events = session.events()
        async with recording(session, video_frames=1000) as tape:
            uid = await session.say("long")
            await next_event(events, "utterance_finished", uid)
            dropped = rt.metrics.value("anchor_frames_dropped_total", where="video_out")
    assert session.pacer.video.dropped == dropped == 10
    assert [v.index for v in tape.video_of(uid)][:2] == [10, 11], "the oldest frames went"


async def test_speech_waits_for_its_first_face_frame_so_the_mouth_starts_with_the_voice() -> None:
    # The face needs 0.3 s for its first frame (a model with lookahead): without the wait at the
    # edge, the first frames would be late and dropped, and the voice would start on a still face.
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph(face_faults=Faults(first_output_s=0.3)))
        events = session.events()
        async with recording(session, audio_ms=10_000, video_frames=1000) as tape:
            uid = await session.say(words(25))
            await next_event(events, "utterance_finished", uid)
    video = tape.video_of(uid)
    assert video[0].index == 0, "no frame of the utterance came too late"
    assert video[0].pts == tape.audio_of(uid)[0].pts, "the first frame shows the first sound"
    assert [v.index for v in video] == list(range(len(video)))
    assert_contiguous(tape)


async def test_a_stalled_face_holds_speech_only_for_the_video_wait() -> None:
    settings = FAST.model_copy(update={"media": FAST.media.model_copy(update={"video_wait_ms": 100.0})})
    async with Runtime(settings) as rt:
        session = await rt.open_session(speech_graph(face_faults=Faults(first_output_s=30.0)))
        events = session.events()
        async with recording(session, audio_ms=10_000) as tape:
            uid = await session.say(words(10))
            await next_event(events, "utterance_finished", uid)
    assert speech_samples(tape, uid) > 0 and not tape.video_of(uid), "the voice goes on without its face"
    assert_contiguous(tape)


async def test_interrupt_flushes_every_stage_and_the_sink() -> None:
    slow = Collect("slow", delay_s=0.01)
    tts = FakeTTS("tts", ms_per_word=MS_PER_WORD)
    graph = Graph().chain(FakeResponder("responder"), slow, tts).link(tts, AUDIO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        events = session.events()
        async with recording(session) as tape:
            uid = await session.say(words(80))
            await next_event(events, "audio_started", uid)
            while session.pacer.audio.buffered_ms == 0:  # noqa: ASYNC110 - a test waiting on a buffer level
                await asyncio.sleep(0.005)
            assert len(session.runner(slow).inbox) > 0, "text is queued upstream"
            cancelled = await session.interrupt()
            assert cancelled == {uid}
            for stage in graph.stages:
                runner = session.runner(stage)
                assert not runner.inbox.holds(lambda f: f.utterance_id == uid)
                assert runner.working_on != uid
            assert len(session.pacer.audio) == 0
            finished = await next_event(events, "utterance_finished", uid)
            assert finished.detail == "interrupted"
            await next_event(events, "silence")
            cut_at = len(tape.audio)
            after = await session.say("fresh words")
            await next_event(events, "utterance_finished", after)
    late = [a for a in tape.audio[cut_at:] if a.utterance_id == uid]
    assert not late, "no stale speech after the interrupt"
    assert speech_samples(tape, after) > 0
    assert_contiguous(tape)


async def test_uninterruptible_utterance_survives_an_interrupt() -> None:
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph())
        events = session.events()
        async with recording(session, audio_ms=10_000) as tape:
            keep = await session.say(words(10, "k"), uninterruptible=True)
            drop = await session.say(words(10, "d"))
            await next_event(events, "audio_started", keep)
            assert await session.interrupt() == {drop}
            done = await next_event(events, "utterance_finished", keep)
            assert done.detail == "done"
    # Every sample of the protected utterance played; the other one never did.
    assert speech_samples(tape, keep) == pytest.approx(10 * WORD_SAMPLES, rel=0.01)
    assert speech_samples(tape, drop) == 0


async def test_a_hung_stage_is_cancelled_after_its_timeout() -> None:
    graph = speech_graph(tts_faults=Faults(hang_marker="HANG"), tts_timeout_s=0.2)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        events = session.events()
        hung = await session.say("HANG here")
        error = await next_event(events, "error", hung)
        assert "tts: StageTimeout: stage tts produced nothing for 0.2 s" in error.detail
        assert (await next_event(events, "utterance_finished", hung)).detail == "error"
        fine = await session.say("then fine words")
        assert (await next_event(events, "utterance_finished", fine)).detail == "done"
        assert rt.metrics.value("anchor_stage_errors_total", stage="tts") == 1


async def test_a_raising_stage_ends_one_utterance_and_no_other_session() -> None:
    async with Runtime(FAST) as rt:
        broken = await rt.open_session(speech_graph(tts_faults=Faults(fail_marker="FAIL")))
        healthy = await rt.open_session(speech_graph())
        broken_events, healthy_events = broken.events(), healthy.events()
        async with recording(healthy, audio_ms=10_000) as tape:
            ok = await healthy.say(words(15))
            bad = await broken.say("this will FAIL now")
            error = await next_event(broken_events, "error", bad)
            assert "FakeStageError: tts: injected failure" in error.detail
            assert (await next_event(healthy_events, "utterance_finished", ok)).detail == "done"
            again = await broken.say("and recovers")
            assert (await next_event(broken_events, "utterance_finished", again)).detail == "done"
    assert speech_samples(tape, ok) == pytest.approx(15 * WORD_SAMPLES, rel=0.01)
    assert_contiguous(tape)


async def test_pts_are_continuous_across_utterances_and_interrupts() -> None:
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph())
        events = session.events()
        async with recording(session, audio_ms=10_000, video_frames=1000) as tape:
            first = await session.say(words(5))
            await next_event(events, "utterance_finished", first)
            second = await session.say(words(30))
            await next_event(events, "audio_started", second)
            await session.interrupt()
            third = await session.say(words(5))
            await next_event(events, "utterance_finished", third)
    assert_contiguous(tape)
    for uid in (first, third):
        # The face's frames sit exactly on the program samples of their audio.
        start = next(a.pts for a in tape.audio if a.utterance_id == uid)
        frames = tape.video_of(uid)
        assert frames, f"no video for {uid}"
        for frame in frames:
            assert frame.offset == start
            assert frame.pts == start + frame.index * 1920
    video_pts = [v.pts for v in tape.video]
    assert video_pts == sorted(set(video_pts)), "video pts strictly increase"


async def test_wrong_rate_audio_at_the_edge_is_an_error_for_that_utterance() -> None:
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph(face=False, sample_rate=16000))
        events = session.events()
        uid = await session.say("wrong rate")
        error = await next_event(events, "error", uid)
        assert "audio at 16000 Hz reached the 48000 Hz output unresampled" in error.detail


async def test_close_leaves_no_task_thread_or_descriptor() -> None:
    def fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = fds()
    rt = Runtime(FAST)
    sessions = [await rt.open_session(speech_graph(tts_faults=Faults(blocking_s=0.001))) for _ in range(3)]
    for s in sessions:
        await s.say(words(20))
    await asyncio.sleep(0.1)
    for s in sessions:
        await s.aclose()
        await s.aclose()  # idempotent
    await rt.aclose()
    assert {t.ident for t in threading.enumerate()} <= threads_before
    assert fds() <= fds_before
    assert rt.metrics.value("anchor_sessions") == 0


async def test_metrics_export_spans_and_prometheus_text() -> None:
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph())
        events = session.events()
        uid = await session.say(words(3))
        await next_event(events, "utterance_finished", uid)
        text = rt.metrics.prometheus_text()
        assert "anchor_first_audio_seconds_count 1.0" in text
        assert 'anchor_utterances_total{outcome="done"} 1.0' in text
        assert 'anchor_stage_latency_seconds_count{stage="tts"}' in text
        dump = rt.metrics.dump()
        (span,) = dump["spans"]
        assert span["utterance"] == uid and span["outcome"] == "done"
        assert (
            0 <= span["first_text_ms"] <= span["first_audio_ms"] <= span["first_video_ms"] <= span["end_ms"]
        )
        assert dump["summary"]["first_audio_ms"]["n"] == 1


async def test_closed_session_rejects_input() -> None:
    async with Runtime(FAST) as rt:
        session = await rt.open_session(speech_graph())
        await session.aclose()
        with pytest.raises(RuntimeError, match=r"session s1 is closed"):
            await session.say("late")


async def test_push_feeds_root_stages_and_routes_system_frames_to_the_control_lane() -> None:
    mic = Collect("mic", accepts=(AudioChunk,))
    tts = FakeTTS("tts", ms_per_word=MS_PER_WORD)
    graph = Graph().add(mic).chain(FakeResponder("responder"), tts).link(tts, AUDIO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        events = session.events()
        chunk = AudioChunk(pcm=np.zeros(480, dtype=np.float32), sample_rate=48000)
        await session.push(chunk)
        uid = await session.say(words(40))
        await next_event(events, "audio_started", uid)
        await session.push(Interrupt(reason="operator"))
        assert (await next_event(events, "utterance_finished", uid)).detail == "interrupted"
        with pytest.raises(ValueError, match=r"no root stage accepts TextDelta \(roots: mic, responder\)"):
            await session.push(TextDelta(text="x"))
    assert len(mic.seen) == 1
    assert mic.seen[0] is chunk, "the mic stage got the audio, and nothing else"
