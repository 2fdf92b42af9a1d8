"""``anchor bench soak``: sessions reading the news for minutes, on the live anchor's real graph.

Each session runs ``anchor run``'s graph (default voice and face, the idle
look) with its own news desk; all desks share one SQLite file, one row set
per session. A receiver per session checks the program it gets:

- ``max_gap_ms``: the longest run of silence inside one utterance (between
  two audio frames of the same sentence), which must stay <= 40 ms;
- memory: resident set size every 10 s; after the first minute its range
  and least-squares slope;
- release: tasks, threads and open descriptors after the sessions closed,
  against before they opened.

Half way through, the last session is asked a question whose responder
fails (an LLM endpoint nobody listens on): it must show an ``error`` event
and go back to reading, and the others must not notice.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anchor.app.live import anchor_graph, default_portrait
from anchor.core.aio import cancel_and_wait
from anchor.core.config import AnchorSettings, LlmSettings
from anchor.core.pacer import Subscription
from anchor.core.runtime import Runtime
from anchor.core.session import EventStream, Session
from anchor.core.stage import StageContext
from anchor.face.look import PortraitLook
from anchor.news.desk import NewsDesk
from anchor.news.store import NewsItem, NewsQueue
from anchor.responders.answer import Answerer, Responder
from anchor.responders.llm import LlmAnswerer
from anchor.speech.voices import resolve_voice

STORY = (
    "Officials confirmed the new schedule on Monday. Trains will run every ten minutes during the day. "
    "Night services start next month, after a trial on two lines. Passengers welcomed the change. "
    "The city expects fewer cars downtown. Work on the stations continues through the summer."
)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _broken_llm(ctx: StageContext) -> Answerer:
    return LlmAnswerer(LlmSettings(base_url="http://127.0.0.1:9/v1", retries=0))


class GapWatch:
    """Silence inside utterances, as a receiver of the paced program sees it."""

    def __init__(self, frame_ms: float) -> None:
        self.frame_ms = frame_ms
        self.max_gap_ms = 0.0
        self.gaps_over_40ms = 0
        self.frames = 0
        self._last_uid = ""
        self._silent = 0

    async def watch(self, sub: Subscription) -> None:
        while (chunk := await sub.next_audio()) is not None:
            self.frames += 1
            uid = chunk.utterance_id
            if not uid:
                self._silent += 1
                continue
            if uid == self._last_uid and self._silent:
                gap = self._silent * self.frame_ms
                self.max_gap_ms = max(self.max_gap_ms, gap)
                self.gaps_over_40ms += gap > 40
            self._last_uid, self._silent = uid, 0


def memory_trend(memory: list[tuple[float, float]]) -> dict[str, float]:
    """RSS after the first minute: its range, and its least-squares slope (MB per minute)."""
    kept = [(t, mb) for t, mb in memory if t >= 60] or memory[-1:]
    times = np.array([t / 60 for t, _ in kept])
    sizes = np.array([mb for _, mb in kept])
    slope = float(np.polyfit(times, sizes, 1)[0]) if len(kept) > 2 else 0.0
    return {
        "min_mb": float(sizes.min()),
        "max_mb": float(sizes.max()),
        "slope_mb_per_min": round(slope, 2),
    }


@dataclass
class SoakSession:
    session: Session
    queue: NewsQueue
    desk: NewsDesk
    gaps: GapWatch
    program: Subscription
    events: EventTally


class EventTally:
    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}
        self.errors: list[str] = []

    async def count(self, events: EventStream) -> None:
        async for event in events:
            self.kinds[event.kind] = self.kinds.get(event.kind, 0) + 1
            if event.kind == "error" and len(self.errors) < 5:
                self.errors.append(event.detail)


async def bench_soak(settings: AnchorSettings, *, minutes: float = 10.0, sessions: int = 2) -> dict[str, Any]:
    portrait = await asyncio.to_thread(default_portrait, settings)
    voice = await asyncio.to_thread(resolve_voice, settings)
    frame_ms = float(settings.media.audio_frame_ms)
    before = {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(), "fds": _open_fds()}
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "news.sqlite3"
        async with Runtime(settings) as runtime:
            opened = []
            for n in range(sessions):
                responder = Responder({"llm": _broken_llm}, "llm" if n == sessions - 1 else "off")
                session = await runtime.open_session(
                    anchor_graph(portrait, settings.media.fps, responder, voice, settings.face.driver),
                    session_id=f"soak{n}",
                    look=PortraitLook(portrait),
                )
                queue = NewsQueue(database, session.id)
                await queue.open()
                desk = NewsDesk(session, queue)
                for k in range(int(minutes * 4) + 4):
                    await desk.enqueue(NewsItem(f"Transport update {k + 1}", STORY))
                program = session.subscribe(audio_ms=2000, video_frames=50)
                opened.append(SoakSession(session, queue, desk, GapWatch(frame_ms), program, EventTally()))
            readers = [asyncio.ensure_future(o.desk.run()) for o in opened]
            watchers = [asyncio.ensure_future(o.gaps.watch(o.program)) for o in opened]
            watchers += [asyncio.ensure_future(o.events.count(o.session.events())) for o in opened]
            memory: list[tuple[float, float]] = []
            began = time.monotonic()
            failure: dict[str, Any] = {}
            try:
                while (elapsed := time.monotonic() - began) < minutes * 60:
                    memory.append((round(elapsed, 1), round(_rss_mb(), 1)))
                    if not failure and elapsed >= minutes * 30:
                        victim = opened[-1].session
                        failure["asked"] = await victim.ask("What happens next?")
                        failure["asked_at_s"] = round(elapsed, 1)
                    await asyncio.sleep(10)
                memory.append((round(time.monotonic() - began, 1), round(_rss_mb(), 1)))
            finally:
                await cancel_and_wait(readers, 5.0)
                results = []
                for o in opened:
                    results.append(
                        {
                            "session": o.session.id,
                            "max_gap_ms": o.gaps.max_gap_ms,
                            "gaps_over_40ms": o.gaps.gaps_over_40ms,
                            "audio_frames": o.gaps.frames,
                            "sentences_finished": o.events.kinds.get("utterance_finished", 0),
                            "errors": o.events.errors,
                        }
                    )
                    o.session.unsubscribe(o.program)
                    await o.session.aclose()
                    await o.queue.aclose()
                await asyncio.gather(*watchers, return_exceptions=True)
    await asyncio.sleep(0.5)
    after = {"tasks": len(asyncio.all_tasks()), "threads": threading.active_count(), "fds": _open_fds()}
    return {
        "minutes": minutes,
        "voice": voice.label,
        "face": settings.face.driver,
        "sessions": results,
        "failure_injected": failure,
        "memory_mb": memory,
        "memory_after_first_minute": memory_trend(memory),
        "before": before,
        "after_close": after,
    }
