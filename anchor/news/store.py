"""The durable news queue: script items in SQLite or PostgreSQL, one row each, with a reading position.

An item is read sentence by sentence; ``sentence`` is the index of the next
sentence to read and moves only after a sentence was spoken to its end. A
restart therefore resumes the item being read at its current sentence, with
nothing lost and nothing read twice. Items are ranked by ``cue`` (an
operator's "read this next"), then priority, then arrival. Every row carries
its session id (ids are unique per session), so one database can serve
many sessions and many processes.

On a cluster, a queue opened with its session's ``epoch`` (the lease a
worker holds in the registry) writes the reading position only while that
epoch is still the session's: a worker that lost its session to another
(it was cut off, then came back) cannot move the position, and is told so
(``Fenced``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from anchor.news.database import Database, DatabaseError, open_database

ItemState = Literal["queued", "reading", "done", "skipped"]

MAX_TITLE = 200
MAX_BODY = 20_000
MAX_PRIORITY = 10

_RANK = "ORDER BY cue DESC, priority DESC, seq ASC"
_OPEN = "state IN ('queued', 'reading')"


class NewsError(ValueError):
    """A news item or queue operation that cannot be carried out, and why."""


class Fenced(NewsError):
    """This process no longer holds the session: another worker took it over (a newer epoch)."""


@dataclass(frozen=True, slots=True)
class NewsItem:
    """A script item as it is submitted."""

    title: str
    body: str
    priority: int = 0
    id: str = ""
    source: str = "api"

    def checked(self) -> NewsItem:
        """This item with surrounding whitespace removed and an id, or ``NewsError``."""
        title, body = self.title.strip(), self.body.strip()
        if not title:
            raise NewsError("news item has an empty title")
        if not body:
            raise NewsError(f"news item {title[:40]!r} has an empty body")
        if len(title) > MAX_TITLE:
            raise NewsError(f"news title is {len(title)} characters; at most {MAX_TITLE}")
        if len(body) > MAX_BODY:
            raise NewsError(f"news body is {len(body)} characters; at most {MAX_BODY}")
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise NewsError(f"news priority must be 0..{MAX_PRIORITY}, got {self.priority}")
        item_id = self.id or content_id(title, body)
        if len(item_id) > 64:
            raise NewsError(f"news item id is {len(item_id)} characters; at most 64")
        return NewsItem(title, body, self.priority, item_id, self.source)


def content_id(title: str, body: str) -> str:
    """A stable id from the text: the same script submitted twice is queued once."""
    return "n-" + hashlib.sha256(f"{title}\n{body}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StoredItem:
    seq: int
    id: str
    title: str
    body: str
    priority: int
    cue: int
    state: ItemState
    sentence: int
    source: str
    added_at: float

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "title": self.title,
            "priority": self.priority,
            "state": self.state,
            "sentence": self.sentence,
            "cued": self.cue > 0,
            "source": self.source,
            "added_at": self.added_at,
        }


_COLUMNS = "seq, id, title, body, priority, cue, state, sentence, source, added_at"


def _row(row: tuple[Any, ...]) -> StoredItem:
    """A row of ``_COLUMNS``; ``state`` is one of ``ItemState`` by the table's CHECK constraint."""
    return StoredItem(*row)


class NewsStore:
    """The news tables of ``db``, for any session; ``epoch``: write positions only under that lease."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, session: str, item: NewsItem) -> bool:
        """Queue ``item`` (checked); False if an item with its id was queued before."""
        item = item.checked()
        added = await self.db.execute(
            "INSERT INTO news_items (id, session, title, body, priority, state, source, added_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT (session, id) DO NOTHING",
            (item.id, session, item.title, item.body, item.priority, item.source, time.time()),
        )
        return added == 1

    async def get(self, session: str, item_id: str) -> StoredItem | None:
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND id = ?", (session, item_id)
        )
        return _row(row) if row else None

    async def next(self, session: str) -> StoredItem | None:
        """The item to read now: cued first, then by priority, then in arrival order."""
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND {_OPEN} {_RANK} LIMIT 1", (session,)
        )
        return _row(row) if row else None

    async def pending(self, session: str, limit: int = 50) -> list[StoredItem]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND {_OPEN} {_RANK} LIMIT ?",
            (session, limit),
        )
        return [_row(r) for r in rows]

    async def recent(self, session: str, limit: int = 10) -> list[StoredItem]:
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND NOT {_OPEN} "
            "ORDER BY finished_at DESC LIMIT ?",
            (session, limit),
        )
        return [_row(r) for r in rows]

    async def begin(self, session: str, item_id: str, epoch: int | None = None) -> None:
        await self._fenced(
            "UPDATE news_items SET state = 'reading' WHERE session = ? AND id = ? AND state = 'queued'",
            (session, item_id),
            session,
            epoch,
        )

    async def advance(self, session: str, item_id: str, sentence: int, epoch: int | None = None) -> None:
        """Record that every sentence before ``sentence`` was spoken."""
        await self._fenced(
            "UPDATE news_items SET sentence = ? WHERE session = ? AND id = ? AND sentence < ?",
            (sentence, session, item_id, sentence),
            session,
            epoch,
        )

    async def finish(
        self, session: str, item_id: str, state: Literal["done", "skipped"], epoch: int | None = None
    ) -> bool:
        changed = await self._fenced(
            "UPDATE news_items SET state = ?, cue = 0, finished_at = ? "
            f"WHERE session = ? AND id = ? AND {_OPEN}",
            (state, time.time(), session, item_id),
            session,
            epoch,
        )
        return changed == 1

    async def _fenced(self, sql: str, params: tuple[Any, ...], session: str, epoch: int | None) -> int:
        """Run an update of ``session``'s reading, only while ``epoch`` (if given) is still its lease;
        ``Fenced`` when it no longer is. The check and the write are one statement: nothing can move
        the session between them."""
        if epoch is None:
            return await self.db.execute(sql, params)
        fence = " AND EXISTS (SELECT 1 FROM anchor_sessions WHERE anchor_sessions.id = ? AND epoch = ?)"
        changed = await self.db.execute(sql + fence, (*params, session, epoch))
        if changed == 0:
            holder = await self.db.fetchone("SELECT epoch FROM anchor_sessions WHERE id = ?", (session,))
            if holder is None or int(holder[0]) != epoch:
                now = "nobody" if holder is None else f"epoch {holder[0]}"
                raise Fenced(f"session {session!r} moved on (this worker held epoch {epoch}, now {now})")
        return changed

    async def cue(self, session: str, item_id: str) -> None:
        """Rank ``item_id`` above every other open item of ``session``, or ``NewsError``."""
        item = await self.get(session, item_id)
        if item is None or item.state not in ("queued", "reading"):
            state = "unknown" if item is None else item.state
            raise NewsError(f"news item {item_id!r} cannot be cued: it is {state}")
        await self.db.execute(
            "UPDATE news_items SET cue = (SELECT COALESCE(MAX(cue), 0) + 1 FROM news_items "
            f"WHERE session = ? AND {_OPEN}) WHERE session = ? AND id = ?",
            (session, session, item_id),
        )

    async def file_signature(self, session: str, path: str) -> str | None:
        """The content hash of ``path`` when it was last imported, if it was."""
        row = await self.db.fetchone(
            "SELECT signature FROM news_files WHERE session = ? AND path = ?", (session, path)
        )
        return str(row[0]) if row else None

    async def remember_file(self, session: str, path: str, signature: str) -> None:
        await self.db.execute(
            "INSERT INTO news_files (session, path, signature) VALUES (?, ?, ?) "
            "ON CONFLICT (session, path) DO UPDATE SET signature = excluded.signature",
            (session, path, signature),
        )

    async def forget_finished(self, session: str, keep: int) -> int:
        """Delete all but the newest ``keep`` finished items (the database stays small over months)."""
        return await self.db.execute(
            f"DELETE FROM news_items WHERE session = ? AND NOT {_OPEN} AND seq NOT IN ("
            f"SELECT seq FROM news_items WHERE session = ? AND NOT {_OPEN} "
            "ORDER BY finished_at DESC LIMIT ?)",
            (session, session, keep),
        )


class NewsQueue:
    """One session's queue. ``database``: a path or URL (opened and closed by this queue) or a
    ``Database`` shared with other sessions (left open). ``epoch``: the session's lease on a cluster."""

    def __init__(self, database: Database | Path | str, session: str, *, epoch: int | None = None) -> None:
        self.session = session
        self.epoch = epoch
        self._own = not isinstance(database, Database)
        self.db = open_database(database) if not isinstance(database, Database) else database
        self.store = NewsStore(self.db)
        self.changed = asyncio.Event()

    async def open(self) -> None:
        if self._own:
            try:
                await self.db.open()
            except DatabaseError as exc:
                raise NewsError(str(exc)) from None

    async def aclose(self) -> None:
        if self._own:
            await self.db.aclose()

    async def add(self, item: NewsItem) -> tuple[str, bool]:
        """Queue ``item``; returns its id and whether it is new (a resubmission is ignored)."""
        checked = item.checked()
        added = await self.store.add(self.session, checked)
        if added:
            self.changed.set()
        return checked.id, added

    async def next(self) -> StoredItem | None:
        return await self.store.next(self.session)

    async def get(self, item_id: str) -> StoredItem | None:
        return await self.store.get(self.session, item_id)

    async def begin(self, item_id: str) -> None:
        await self.store.begin(self.session, item_id, self.epoch)

    async def advance(self, item_id: str, sentence: int) -> None:
        await self.store.advance(self.session, item_id, sentence, self.epoch)

    async def finish(self, item_id: str, state: Literal["done", "skipped"]) -> bool:
        done = await self.store.finish(self.session, item_id, state, self.epoch)
        await self.store.forget_finished(self.session, 200)
        self.changed.set()
        return done

    async def cue(self, item_id: str) -> None:
        await self.store.cue(self.session, item_id)
        self.changed.set()

    async def file_signature(self, path: str) -> str | None:
        return await self.store.file_signature(self.session, path)

    async def remember_file(self, path: str, signature: str) -> None:
        await self.store.remember_file(self.session, path, signature)

    async def listing(self) -> dict[str, list[dict[str, object]]]:
        pending = await self.store.pending(self.session)
        recent = await self.store.recent(self.session)
        return {"pending": [i.as_dict() for i in pending], "recent": [i.as_dict() for i in recent]}
