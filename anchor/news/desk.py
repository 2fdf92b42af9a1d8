"""The news desk: reads the queue on a session, one sentence per utterance.

Each sentence is its own utterance, and the reading position moves only when
a sentence was spoken to its end. That gives every rule of a live desk from
one loop:

- a breaking item (higher priority, or cued) takes over at the next sentence
  boundary, and the item it displaced resumes where it stopped;
- a viewer who speaks cuts the sentence (barge-in); the desk holds while the
  viewer talks and the anchor answers, then reads that sentence again once
  the session was quiet for ``resume_after_s``;
- a restart resumes at the sentence being read (the position is in the
  database, SQLite or PostgreSQL; a write is retried while it is out of reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from anchor.core.backoff import Backoff
from anchor.core.recent import RecentIds
from anchor.core.session import EventStream, Session, SessionEvent
from anchor.news.database import DatabaseUnavailable
from anchor.news.store import NewsError, NewsItem, NewsQueue, StoredItem
from anchor.speech.phrases import sentences

log = logging.getLogger(__name__)

T = TypeVar("T")

ORIGIN = "news"


def script_sentences(item: StoredItem) -> list[str]:
    """What is read for ``item``: its title as one sentence, then its body sentence by sentence."""
    title = item.title.strip()
    if title and title[-1] not in ".!?…":
        title += "."
    return [title, *sentences(item.body)]


@dataclass(frozen=True, slots=True)
class DeskTiming:
    resume_after_s: float = 2.0
    """Quiet needed (no viewer speech, no other utterance) before reading goes on."""
    listen_hold_s: float = 8.0
    """After a viewer starts speaking, how long to wait for their transcript before reading goes on."""


class NewsDesk:
    def __init__(self, session: Session, queue: NewsQueue, timing: DeskTiming | None = None) -> None:
        self.session = session
        self.queue = queue
        self.timing = timing or DeskTiming()
        self.on_air = True
        self.current: StoredItem | None = None
        self._speaking = ""
        self._ours = RecentIds(64)
        self._activity_until = 0.0
        self._wake = asyncio.Event()
        self._turn = asyncio.Lock()  # held while a sentence is read and its place recorded

    # -- control (MQTT, HTTP) ------------------------------------------------------
    async def enqueue(self, item: NewsItem) -> tuple[str, bool]:
        item_id, added = await self.queue.add(item)
        if added:
            self.session.announce("news", f"queued {item_id} p{item.priority}: {item.title.strip()[:120]}")
        self._wake.set()
        return item_id, added

    async def cue(self, item_id: str) -> None:
        await self.queue.cue(item_id)
        self.session.announce("news", f"cued {item_id}")
        self._wake.set()

    async def skip(self) -> str:
        """Stop reading the current item for good; returns its id, or ``NewsError`` when none is read."""
        item = self.current
        if item is None or not await self.queue.finish(item.id, "skipped"):
            raise NewsError("no news item is being read")
        self.current = None
        self.session.announce("news", f"skipped {item.id}")
        if self._speaking:
            await self.session.cancel(self._speaking, "news skip")
        return item.id

    async def submit(self, title: str, body: str, priority: int) -> tuple[str, bool]:
        """An item from the web page or API (``NewsError``, a ``ValueError``, when it is bad)."""
        return await self.enqueue(NewsItem(title, body, priority, source="http"))

    async def listing(self) -> dict[str, object]:
        """The queue as the page shows it: pending items in reading order, recent ones, the desk."""
        return {**await self.queue.listing(), "desk": self.status()}

    def set_on_air(self, on_air: bool) -> None:
        """Off air: finish nothing new (the sentence being spoken ends as it is)."""
        self.on_air = on_air
        self.session.announce("news", "on air" if on_air else "off air")
        self._wake.set()

    async def parked(self) -> None:
        """Once off air: until the sentence being read (if any) has ended and its place is recorded. A
        drain waits for this before the session stops or moves: a spoken sentence whose place were not
        yet written would be read again on the next start."""
        async with self._turn:
            pass

    def status(self) -> dict[str, object]:
        item = self.current
        return {
            "on_air": self.on_air,
            "item": item.id if item else None,
            "title": item.title if item else None,
        }

    # -- the reading loop ----------------------------------------------------------
    async def run(self) -> None:
        """Read until cancelled or the session closes."""
        events = self.session.events()
        watcher = asyncio.get_running_loop().create_task(self._watch(events), name="news-desk:watch")
        try:
            while self.session.state == "running":
                await self._wait_until_clear()
                # Cleared before looking, so an item queued while we look still wakes the wait.
                self.queue.changed.clear()
                async with self._turn:
                    if not self.on_air:
                        continue
                    item = await self._durably(self.queue.next)
                    if item is not None:
                        await self._read_one_sentence(item)
                        continue
                await self.queue.changed.wait()
        finally:
            events.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _read_one_sentence(self, item: StoredItem) -> None:
        parts = script_sentences(item)
        index = item.sentence
        if index >= len(parts):
            await self._durably(lambda: self.queue.finish(item.id, "done"))
            return
        if item.state == "queued":
            await self._durably(lambda: self.queue.begin(item.id))
            self.session.announce("news", f"reading {item.id}: {item.title[:120]}")
        self.current = item
        uid = await self.session.say(parts[index], origin=ORIGIN)
        self._ours.add(uid)
        self._speaking = uid
        try:
            outcome = await self.session.outcome(uid)
        finally:
            self._speaking = ""
        if outcome in ("closed", "interrupted"):
            return  # read this sentence again once it is clear (or never, if it was skipped)
        if outcome == "error":
            log.warning("news item %s: sentence %d failed; going on with the next", item.id, index)
        if index + 1 >= len(parts):
            if await self._durably(lambda: self.queue.finish(item.id, "done")):
                self.session.announce("news", f"done {item.id}")
            self.current = None
        else:
            await self._durably(lambda: self.queue.advance(item.id, index + 1))

    async def _durably(self, call: Callable[[], Awaitable[T]]) -> T:
        """A queue call, tried again while the database is out of reach: a spoken sentence whose record
        were lost would be read twice. ``Fenced`` (the session moved to another worker) ends the reading."""
        backoff = Backoff(0.2, 2.0)
        while True:
            try:
                return await call()
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                log.warning("news desk: %s; trying again in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _wait_until_clear(self) -> None:
        """Until on air, no other utterance is live and the viewer side was quiet long enough."""
        while True:
            others = {u for u in self.session.utterances.live() if u not in self._ours}
            hold = self._activity_until - time.monotonic()
            if self.on_air and not others and hold <= 0:
                return
            self._wake.clear()
            timeout = hold if hold > 0 and self.on_air and not others else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _watch(self, events: EventStream) -> None:
        """Hold reading while anything but the desk happens on the session."""
        async for event in events:
            self._note(event)

    def _note(self, event: SessionEvent) -> None:
        now = time.monotonic()
        if event.kind == "speech_started":
            self._activity_until = max(self._activity_until, now + self.timing.listen_hold_s)
        elif event.kind in ("transcript", "question", "utterance_started", "utterance_finished"):
            if event.origin == ORIGIN or event.utterance_id in self._ours:
                return
            self._activity_until = now + self.timing.resume_after_s
        else:
            return
        self._wake.set()
