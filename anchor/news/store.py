"""The durable news queue: script items in SQLite, one row each, with a reading position.

An item is read sentence by sentence; ``sentence`` is the index of the next
sentence to read and moves only after a sentence was spoken to its end. A
restart therefore resumes the item being read at its current sentence, with
nothing lost and nothing read twice. Items are ranked by ``cue`` (an
operator's "read this next"), then priority, then arrival. Every row carries
its session id (ids are unique per session), so one database (later a
shared one) can serve many sessions and many processes.

SQLite calls block: the async wrapper ``NewsQueue`` runs them on one
dedicated thread, which also serialises them.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

ItemState = Literal["queued", "reading", "done", "skipped"]

MAX_TITLE = 200
MAX_BODY = 20_000
MAX_PRIORITY = 10

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS news_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    session TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL,
    cue INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('queued', 'reading', 'done', 'skipped')),
    sentence INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    added_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (session, id)
);
CREATE TABLE IF NOT EXISTS news_files (
    session TEXT NOT NULL,
    path TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (session, path)
);
CREATE INDEX IF NOT EXISTS news_items_next ON news_items (session, state, cue, priority, seq);
"""

_RANK = "ORDER BY cue DESC, priority DESC, seq ASC"
_OPEN = "state IN ('queued', 'reading')"


class NewsError(ValueError):
    """A news item or queue operation that cannot be carried out, and why."""


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
    """Synchronous SQLite access (use from one thread; ``NewsQueue`` does)."""

    def __init__(self, path: Path | str) -> None:
        target = str(path)
        if target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise NewsError(f"news database {target} cannot be used: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise NewsError(
                    f"news database {target} has schema version {version}; this anchor reads {SCHEMA_VERSION}"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.DatabaseError, NewsError) as exc:
            self._db.close()
            if isinstance(exc, NewsError):
                raise
            raise NewsError(f"news database {target} cannot be used: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def add(self, session: str, item: NewsItem) -> bool:
        """Queue ``item`` (checked); False if an item with its id was queued before."""
        item = item.checked()
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO news_items (id, session, title, body, priority, state, source, added_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            (item.id, session, item.title, item.body, item.priority, item.source, time.time()),
        )
        return cursor.rowcount == 1

    def get(self, session: str, item_id: str) -> StoredItem | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND id = ?", (session, item_id)
        ).fetchone()
        return _row(row) if row else None

    def next(self, session: str) -> StoredItem | None:
        """The item to read now: cued first, then by priority, then in arrival order."""
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND {_OPEN} {_RANK} LIMIT 1", (session,)
        ).fetchone()
        return _row(row) if row else None

    def pending(self, session: str, limit: int = 50) -> list[StoredItem]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND {_OPEN} {_RANK} LIMIT ?",
            (session, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def recent(self, session: str, limit: int = 10) -> list[StoredItem]:
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM news_items WHERE session = ? AND NOT {_OPEN} "
            "ORDER BY finished_at DESC LIMIT ?",
            (session, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def begin(self, session: str, item_id: str) -> None:
        self._db.execute(
            "UPDATE news_items SET state = 'reading' WHERE session = ? AND id = ? AND state = 'queued'",
            (session, item_id),
        )

    def advance(self, session: str, item_id: str, sentence: int) -> None:
        """Record that every sentence before ``sentence`` was spoken."""
        self._db.execute(
            "UPDATE news_items SET sentence = ? WHERE session = ? AND id = ? AND sentence < ?",
            (sentence, session, item_id, sentence),
        )

    def finish(self, session: str, item_id: str, state: Literal["done", "skipped"]) -> bool:
        cursor = self._db.execute(
            "UPDATE news_items SET state = ?, cue = 0, finished_at = ? "
            f"WHERE session = ? AND id = ? AND {_OPEN}",
            (state, time.time(), session, item_id),
        )
        return cursor.rowcount == 1

    def cue(self, session: str, item_id: str) -> None:
        """Rank ``item_id`` above every other open item of ``session``, or ``NewsError``."""
        item = self.get(session, item_id)
        if item is None or item.state not in ("queued", "reading"):
            state = "unknown" if item is None else item.state
            raise NewsError(f"news item {item_id!r} cannot be cued: it is {state}")
        top = self._db.execute(
            f"SELECT COALESCE(MAX(cue), 0) FROM news_items WHERE session = ? AND {_OPEN}", (session,)
        ).fetchone()[0]
        self._db.execute(
            "UPDATE news_items SET cue = ? WHERE session = ? AND id = ?", (int(top) + 1, session, item_id)
        )

    def file_signature(self, session: str, path: str) -> str | None:
        """The content hash of ``path`` when it was last imported, if it was."""
        row = self._db.execute(
            "SELECT signature FROM news_files WHERE session = ? AND path = ?", (session, path)
        ).fetchone()
        return str(row[0]) if row else None

    def remember_file(self, session: str, path: str, signature: str) -> None:
        self._db.execute(
            "INSERT INTO news_files (session, path, signature) VALUES (?, ?, ?) "
            "ON CONFLICT (session, path) DO UPDATE SET signature = excluded.signature",
            (session, path, signature),
        )

    def forget_finished(self, session: str, keep: int) -> int:
        """Delete all but the newest ``keep`` finished items (the database stays small over months)."""
        cursor = self._db.execute(
            f"DELETE FROM news_items WHERE session = ? AND NOT {_OPEN} AND seq NOT IN ("
            f"SELECT seq FROM news_items WHERE session = ? AND NOT {_OPEN} "
            "ORDER BY finished_at DESC LIMIT ?)",
            (session, session, keep),
        )
        return cursor.rowcount


class NewsQueue:
    """The store, used from asyncio: each call runs on the store's own thread."""

    def __init__(self, path: Path | str, session: str) -> None:
        self.session = session
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="news-db")
        self._store: NewsStore | None = None
        self._path = path
        self.changed = asyncio.Event()

    async def open(self) -> None:
        self._store = await self._call(NewsStore, self._path)

    async def aclose(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            await self._call(store.close)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args))

    @property
    def store(self) -> NewsStore:
        if self._store is None:
            raise RuntimeError("the news queue is not open")
        return self._store

    async def add(self, item: NewsItem) -> tuple[str, bool]:
        """Queue ``item``; returns its id and whether it is new (a resubmission is ignored)."""
        checked = item.checked()
        added = await self._call(self.store.add, self.session, checked)
        if added:
            self.changed.set()
        return checked.id, added

    async def next(self) -> StoredItem | None:
        return await self._call(self.store.next, self.session)

    async def get(self, item_id: str) -> StoredItem | None:
        return await self._call(self.store.get, self.session, item_id)

    async def begin(self, item_id: str) -> None:
        await self._call(self.store.begin, self.session, item_id)

    async def advance(self, item_id: str, sentence: int) -> None:
        await self._call(self.store.advance, self.session, item_id, sentence)

    async def finish(self, item_id: str, state: Literal["done", "skipped"]) -> bool:
        done = await self._call(self.store.finish, self.session, item_id, state)
        await self._call(self.store.forget_finished, self.session, 200)
        self.changed.set()
        return done

    async def cue(self, item_id: str) -> None:
        await self._call(self.store.cue, self.session, item_id)
        self.changed.set()

    async def file_signature(self, path: str) -> str | None:
        return await self._call(self.store.file_signature, self.session, path)

    async def remember_file(self, path: str, signature: str) -> None:
        await self._call(self.store.remember_file, self.session, path, signature)

    async def listing(self) -> dict[str, list[dict[str, object]]]:
        pending = await self._call(self.store.pending, self.session)
        recent = await self._call(self.store.recent, self.session)
        return {"pending": [i.as_dict() for i in pending], "recent": [i.as_dict() for i in recent]}
