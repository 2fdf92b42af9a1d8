"""A session: one anchor program (one graph, one paced edge, many viewers).

Lifecycle: ``Runtime.open_session`` -> ``say``/``push``/``interrupt`` ->
``aclose``. Closing cancels every task the session started (bounded by the
cancel timeout) and leaves no task or descriptor behind. A stage that raises
ends only the utterance it was working on, with an ``error`` event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

from anchor.core.aio import TaskOwner, cancel_and_wait
from anchor.core.config import AnchorSettings
from anchor.core.frames import (
    Ask,
    EndReason,
    ErrorEvent,
    Frame,
    Interrupt,
    Say,
    SpeechStarted,
    TextDelta,
    Transcript,
)
from anchor.core.graph import VIDEO_OUT, Graph, GraphRun, Hooks, StageRunner
from anchor.core.mailbox import Mailbox
from anchor.core.metrics import Metrics
from anchor.core.pacer import OutputPacer, StillImage, Subscription, VideoLook
from anchor.core.recent import RecentIds, RecentMap
from anchor.core.stage import Inference, Stage, StageContext
from anchor.core.utterances import Utterances

log = logging.getLogger(__name__)

EventKind = Literal[
    "utterance_started",
    "question",
    "answer",
    "audio_started",
    "video_started",
    "utterance_finished",
    "error",
    "silence",
    "transcript",
    "speech_started",
    "news",
]


class SessionClosed(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class SessionEvent:
    kind: EventKind
    utterance_id: str = ""
    detail: str = ""
    at_ns: int = field(default_factory=time.monotonic_ns)
    origin: str = ""
    """Who started the utterance (``news`` for the desk); empty for commands and viewers."""
    private: bool = False
    """What a viewer said or asked: for the operator and that viewer, not for the whole audience."""
    asker: str = ""
    """Whose it is, when known (the subject of the token that asked); empty for a microphone's speech."""


class EventStream:
    """A bounded feed of session events; the oldest is dropped (and counted) when full."""

    def __init__(self, maxlen: int) -> None:
        self._box: Mailbox[SessionEvent] = Mailbox()
        self._maxlen = maxlen
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._box.closed

    def publish(self, event: SessionEvent) -> None:
        self._box.put(event)
        if len(self._box) > self._maxlen:
            self._box.items.popleft()
            self.dropped += 1

    def close(self) -> None:
        self._box.close()

    async def next(self) -> SessionEvent | None:
        """The next event; ``None`` once the session closed and all were read."""
        return await self._box.get()

    async def __aiter__(self) -> AsyncIterator[SessionEvent]:
        while (event := await self.next()) is not None:
            yield event


class Session:
    def __init__(
        self,
        session_id: str,
        graph: Graph,
        *,
        settings: AnchorSettings,
        metrics: Metrics,
        executor: Executor,
        engines: Inference,
        look: VideoLook | None = None,
        barge_in: bool = True,
        answer_transcripts: bool = False,
    ) -> None:
        self.id = session_id
        self.settings = settings
        self.metrics = metrics
        self.barge_in = barge_in
        self.answer_transcripts = answer_transcripts
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._questions = RecentIds(64)
        self._outcomes: RecentMap[str] = RecentMap(256)
        self.state: Literal["new", "running", "closed"] = "new"
        self.utterances = Utterances(session_id)
        self._owner = TaskOwner(
            f"session {session_id}", settings.graph.cancel_timeout_s, self._background_failed
        )
        self._control: asyncio.Queue[Frame] = asyncio.Queue(maxsize=256)
        self._streams: list[EventStream] = []
        self._interrupt_ns: int | None = None
        hooks = Hooks(
            is_stale=self.utterances.is_stale,
            on_emit=self._on_emit,
            on_control=self._on_control,
            on_stage_time=metrics.observe_stage,
            on_drop=lambda where, _f: metrics.frames_dropped.labels(where).inc(),
        )
        media = settings.media
        self.pacer = OutputPacer(
            media,
            settings.graph,
            look=look or StillImage.gray(media.width, media.height),
            listener=self,
            is_stale=self.utterances.is_stale,
            is_live=self.utterances.is_live,
            expects_video=any(link.dst is VIDEO_OUT for link in graph.links),
        )
        self._run = GraphRun(
            graph,
            settings=settings,
            ctx=StageContext(session_id, settings, executor, engines),
            hooks=hooks,
            audio_out=self.pacer.audio,
            video_out=self.pacer.video,
            owner=self._owner,
        )

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        if self.state != "new":
            raise RuntimeError(f"session {self.id} was already started")
        await self._run.start()
        self._owner.spawn(self.pacer.run(), "pacer")
        self._owner.spawn(self._control_loop(), "control")
        self.state = "running"
        self.metrics.sessions.inc()

    async def aclose(self) -> None:
        """Stop everything this session started; safe to call twice."""
        if self.state == "closed":
            return
        was_running = self.state == "running"
        self.state = "closed"
        live = self.utterances.cancel(self.utterances.live())
        for uid in live:
            self.metrics.finish(uid, "closed")
            self._settle(uid, "closed")
        await self._owner.aclose()
        await self._run.stop_stages()
        self.pacer.close()
        for stream in self._streams:
            stream.close()
        self._streams.clear()
        if was_running:
            self.metrics.sessions.dec()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _require_running(self) -> None:
        if self.state != "running":
            raise SessionClosed(f"session {self.id} is {self.state}")

    # -- input ---------------------------------------------------------------------
    async def say(self, text: str, *, uninterruptible: bool = False, origin: str = "") -> str:
        """Start a new utterance speaking ``text``; returns its id."""
        self._require_running()
        utt = self.utterances.new(uninterruptible=uninterruptible)
        self.metrics.start(self.id, utt.id)
        self._publish(SessionEvent("utterance_started", utt.id, text[:200], origin=origin))
        await self._open(Say(text=text, utterance_id=utt.id, uninterruptible=uninterruptible))
        return utt.id

    def live_lines(self) -> int:
        """Utterances queued or being spoken now."""
        return len(self.utterances.live())

    def has_room(self) -> bool:
        """Whether a new line from outside may queue: fewer than ``graph.max_live_utterances`` are live."""
        return self.live_lines() < self.settings.graph.max_live_utterances

    async def ask(self, question: str, *, asker: str = "") -> str:
        """Answer ``question`` (a viewer's words) as a new utterance through the graph's responder.

        The question itself is a private event (``asker``: whose, when known); the answer is spoken
        to everyone, so its text is not."""
        self._require_running()
        utt = self.utterances.new()
        self.metrics.start(self.id, utt.id)
        self._questions.add(utt.id)
        self._publish(SessionEvent("question", utt.id, question[:2000], private=True, asker=asker))
        self._publish(SessionEvent("utterance_started", utt.id, ""))
        await self._open(Ask(text=question, utterance_id=utt.id))
        return utt.id

    async def _open(self, frame: Say | Ask) -> None:
        """Push the first frame of a new utterance; if no stage takes it, the utterance ends as an error."""
        try:
            await self._run.push(frame)
        except ValueError as exc:
            await self._cancel(frozenset({frame.utterance_id}), "error", str(exc))
            raise

    async def outcome(self, utterance_id: str) -> str:
        """Wait for ``utterance_id`` to end: ``done``, ``interrupted``, ``error`` or ``closed``."""
        if (known := self._outcomes.get(utterance_id)) is not None:
            return known
        if not self.utterances.is_live(utterance_id):
            raise KeyError(f"no utterance {utterance_id} in session {self.id}")
        waiter = self._waiters.get(utterance_id)
        if waiter is None:
            waiter = self._waiters[utterance_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(waiter)

    async def cancel(self, utterance_id: str, reason: str = "cancelled") -> bool:
        """Cut one utterance (queued or speaking); True if it was live."""
        self._require_running()
        if not self.utterances.is_live(utterance_id):
            return False
        await self._cancel(frozenset({utterance_id}), "interrupted", reason)
        return True

    def _settle(self, utterance_id: str, outcome: str) -> None:
        self._outcomes[utterance_id] = outcome
        waiter = self._waiters.pop(utterance_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    async def push(self, frame: Frame) -> None:
        """Feed an input frame (e.g. viewer audio) to the graph's root stages."""
        self._require_running()
        if frame.system:
            self._on_control(frame)
            return
        await self._run.push(frame)

    async def interrupt(self, reason: str = "interrupt") -> frozenset[str]:
        """Cut every interruptible utterance now; returns the ids that were cancelled."""
        self._require_running()
        ids = self.utterances.interruptible()
        if not ids:
            return ids
        self._interrupt_ns = time.monotonic_ns()
        cut = await self._cancel(ids, "interrupted", reason)
        if not cut:
            # None of it had reached the edge: silence is immediate.
            self.silence()
        return ids

    async def _cancel(self, ids: frozenset[str], outcome: str, detail: str) -> bool:
        if not ids:
            return False
        live = self.utterances.cancel(ids)
        works = self._run.cancel(ids)
        cut = self.pacer.cancel(ids)
        for uid in live:
            self.metrics.finish(uid, outcome, detail if outcome == "error" else "")
            self._publish(SessionEvent("utterance_finished", uid, outcome))
            self._settle(uid, outcome)
        if works:
            await cancel_and_wait(works, self.settings.graph.cancel_timeout_s)
        return cut

    # -- output --------------------------------------------------------------------
    def runner(self, stage: Stage) -> StageRunner:
        """How ``stage`` runs in this session: its inbox and the utterance it is working on."""
        return self._run.runners[id(stage)]

    def subscribe(self, *, audio_ms: float = 500.0, video_frames: int = 8) -> Subscription:
        self._require_running()
        return self.pacer.subscribe(audio_ms=audio_ms, video_frames=video_frames)

    def mute(self, muted: bool) -> None:
        """Silence (or restore) the program audio at the edge; speech and video go on."""
        self._require_running()
        self.pacer.muted = muted

    @property
    def muted(self) -> bool:
        return self.pacer.muted

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` (a viewer that left); its waiters get ``None``."""
        self.pacer.unsubscribe(sub)

    def events(self) -> EventStream:
        stream = EventStream(self.settings.runtime.event_queue)
        if self.state == "closed":
            stream.close()
        else:
            self._streams.append(stream)
        return stream

    def announce(self, kind: EventKind, detail: str = "", utterance_id: str = "") -> None:
        """Publish an event from a part that drives this session (the news desk, a responder switch)."""
        self._publish(SessionEvent(kind, utterance_id, detail))

    def _publish(self, event: SessionEvent) -> None:
        for stream in self._streams:
            stream.publish(event)

    # -- the control lane ----------------------------------------------------------
    def _on_emit(self, frame: Frame) -> None:
        if isinstance(frame, TextDelta):
            self.metrics.mark(frame.utterance_id, "first_text")
            if frame.utterance_id in self._questions:
                self._publish(SessionEvent("answer", frame.utterance_id, frame.text[:2000]))
        elif isinstance(frame, Transcript) and frame.final:
            self._publish(SessionEvent("transcript", frame.utterance_id, frame.text[:2000], private=True))
            if self.answer_transcripts and frame.text.strip():
                self._on_control(frame)

    def _on_control(self, frame: Frame) -> None:
        try:
            self._control.put_nowait(frame)
        except asyncio.QueueFull:
            log.error("session %s: control lane full, dropped %s", self.id, type(frame).__name__)

    async def _control_loop(self) -> None:
        while True:
            frame = await self._control.get()
            if isinstance(frame, ErrorEvent):
                log.warning(
                    "session %s: stage %s failed on %s: %s",
                    self.id,
                    frame.stage,
                    frame.utterance_id,
                    frame.message,
                )
                self.metrics.stage_errors.labels(frame.stage).inc()
                self._publish(SessionEvent("error", frame.utterance_id, f"{frame.stage}: {frame.message}"))
                if frame.utterance_id:
                    await self._cancel(frozenset({frame.utterance_id}), "error", frame.message)
            elif isinstance(frame, Interrupt):
                await self.interrupt(frame.reason)
            elif isinstance(frame, SpeechStarted):
                self._publish(SessionEvent("speech_started"))
                if self.barge_in:
                    await self.interrupt("barge-in")
            elif isinstance(frame, Transcript):
                await self.ask(frame.text)

    def _background_failed(self, name: str, exc: BaseException) -> None:
        self._publish(SessionEvent("error", "", f"{name} failed: {type(exc).__name__}: {exc}"))

    # -- PacerListener -------------------------------------------------------------
    def audio_started(self, utterance_id: str) -> None:
        self.metrics.mark(utterance_id, "first_audio")
        self._publish(SessionEvent("audio_started", utterance_id))

    def video_started(self, utterance_id: str) -> None:
        self.metrics.mark(utterance_id, "first_video")
        self._publish(SessionEvent("video_started", utterance_id))

    def utterance_ended(self, utterance_id: str, reason: EndReason) -> None:
        if self.utterances.finish(utterance_id):
            self.metrics.finish(utterance_id, reason)
            self._publish(SessionEvent("utterance_finished", utterance_id, reason))
            self._settle(utterance_id, reason)

    def silence(self) -> None:
        if self._interrupt_ns is None:
            return
        now = time.monotonic_ns()
        self.metrics.observe_interrupt(self._interrupt_ns, now)
        self._publish(SessionEvent("silence", "", f"{(now - self._interrupt_ns) / 1e6:.2f} ms"))
        self._interrupt_ns = None

    def underrun(self, utterance_id: str, seconds: float) -> None:
        self.metrics.audio_underrun.inc(seconds)

    def dropped(self, where: str, frame: Frame) -> None:
        self.metrics.frames_dropped.labels(where).inc()

    def bad_frame(self, utterance_id: str, message: str) -> None:
        self._on_control(ErrorEvent(utterance_id=utterance_id, stage="output", message=message))
