"""Where the shared state lives: a SQLite file on one machine, PostgreSQL for a cluster.

``news.database`` is either a path (SQLite) or a ``postgresql://`` URL. Both
hold the same tables, written once in SQL both understand (``?``
placeholders, ``ON CONFLICT``, ``RETURNING``); the few differences (the
serial key, the clock) are named here. Every call is bounded by
``timeout_s``: a database behind a cut link must not hang a session, so a
call that runs out of time raises ``DatabaseUnavailable`` and the next call
connects afresh.

SQLite calls block, so they run on one dedicated thread (which also
serialises them); PostgreSQL is reached with psycopg 3's async connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from anchor.core.redaction import redact_url

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]
Dialect = Literal["sqlite", "postgresql"]

SCHEMA_VERSION = 2  # 2: the session registry (anchor_sessions) joined the news tables
_SCHEMA = """
CREATE TABLE IF NOT EXISTS news_items (
    seq {serial},
    id TEXT NOT NULL,
    session TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    priority INTEGER NOT NULL,
    cue INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('queued', 'reading', 'done', 'skipped')),
    sentence INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    UNIQUE (session, id)
);
CREATE TABLE IF NOT EXISTS news_files (
    session TEXT NOT NULL,
    path TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (session, path)
);
CREATE INDEX IF NOT EXISTS news_items_next ON news_items (session, state, cue, priority, seq);
CREATE TABLE IF NOT EXISTS anchor_sessions (
    id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    url TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL,
    wanted INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS anchor_sessions_holder ON anchor_sessions (holder);
"""
_SERIAL: dict[Dialect, str] = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGSERIAL PRIMARY KEY",
}
#: The database's own clock in unix seconds: leases are compared on one clock, whatever the workers' say.
NOW: dict[Dialect, str] = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::DOUBLE PRECISION",
}


class DatabaseError(ValueError):
    """A database that cannot be used (wrong file, wrong schema, refused login), and why."""


class DatabaseUnavailable(DatabaseError):
    """The database did not answer in time or the connection broke: the call may be tried again."""


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Database:
    """The calls the stores make; ``sql`` uses ``?`` placeholders in both dialects."""

    dialect: Dialect
    name: str

    async def open(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @property
    def now(self) -> str:
        """SQL for the database's clock, in unix seconds."""
        return NOW[self.dialect]

    def schema(self) -> str:
        return _SCHEMA.format(serial=_SERIAL[self.dialect])


def open_database(target: str | Path, *, timeout_s: float = 5.0) -> Database:
    """The database for ``news.database``: SQLite for a path, PostgreSQL for a ``postgresql://`` URL."""
    if is_postgres_url(target):
        return PostgresDatabase(str(target), timeout_s=timeout_s)
    return SqliteDatabase(target, timeout_s=timeout_s)


class SqliteDatabase(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path, *, timeout_s: float = 5.0) -> None:
        self.name = str(path)
        self.timeout_s = timeout_s
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="anchor-db")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        self._db = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self.name != ":memory:":
            Path(self.name).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.name, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(f"news database {self.name} cannot be used: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            _check_version(self.name, version)
            db.executescript(self.schema())
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise DatabaseError(f"news database {self.name} cannot be used: {exc}") from exc
        except DatabaseError:
            db.close()
            raise
        return db

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._call(db.close)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, partial(fn, *args))

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"database {self.name} is not open")
        return self._db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        db = self._conn()
        return await self._call(lambda: db.execute(sql, tuple(params)).rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        db = self._conn()
        return await self._call(lambda: db.execute(sql, tuple(params)).fetchall())


def _check_version(name: str, version: int) -> None:
    if version not in (0, 1, SCHEMA_VERSION):  # 1 only lacks a table that the schema adds
        raise DatabaseError(
            f"news database {name} has schema version {version}; this anchor reads {SCHEMA_VERSION}"
        )


class PostgresDatabase(Database):
    """One psycopg async connection in autocommit; a broken or silent one is dropped, and the next call
    connects again (a worker outlives a database restart)."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url
        self.name = redact_url(url)
        self.timeout_s = timeout_s
        self._conn: Any = None  # psycopg.AsyncConnection, imported on use (a cluster-only dependency)
        self._lock = asyncio.Lock()
        self._rowcount = 0

    async def open(self) -> None:
        async with self._lock:
            await self._connected()
            await self._run("SELECT pg_advisory_lock(7261)", ())  # one migration at a time over the cluster
            try:
                row = await self._run(
                    "SELECT version FROM anchor_schema" if await self._has_version_table() else "SELECT 0", ()
                )
                _check_version(self.name, int(row[0][0]) if row else 0)
                for statement in filter(str.strip, self.schema().split(";")):
                    await self._run(statement, ())
                await self._run("CREATE TABLE IF NOT EXISTS anchor_schema (version INTEGER NOT NULL)", ())
                await self._run("DELETE FROM anchor_schema", ())
                await self._run("INSERT INTO anchor_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            finally:
                await self._run("SELECT pg_advisory_unlock(7261)", ())

    async def _has_version_table(self) -> bool:
        rows = await self._run("SELECT to_regclass('anchor_schema') IS NOT NULL", ())
        return bool(rows[0][0])

    async def _connected(self) -> Any:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            import psycopg
        except ImportError:
            raise DatabaseError(
                "a postgresql:// news database needs psycopg: pip install 'virtual-anchor[cluster]'"
            ) from None
        try:
            async with asyncio.timeout(self.timeout_s):
                self._conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(1, int(self.timeout_s)),
                    keepalives=1,
                    keepalives_idle=2,
                    keepalives_interval=1,
                    keepalives_count=3,
                )
        except TimeoutError:
            raise DatabaseUnavailable(
                f"news database {self.name} did not answer in {self.timeout_s:g} s"
            ) from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(
                f"news database {self.name} cannot be reached: {_first_line(exc)}"
            ) from None
        return self._conn

    async def _run(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """One statement on the connection (the caller holds the lock); rows, or ``[]`` when it has none."""
        import psycopg

        conn = await self._connected()
        try:
            async with asyncio.timeout(self.timeout_s):
                cursor = await conn.execute(sql, tuple(params))
                self._rowcount = cursor.rowcount
                return list(await cursor.fetchall()) if cursor.description is not None else []
        except TimeoutError:
            await self._drop()
            raise DatabaseUnavailable(
                f"news database {self.name} did not answer in {self.timeout_s:g} s"
            ) from None
        except psycopg.OperationalError as exc:
            await self._drop()
            raise DatabaseUnavailable(f"news database {self.name}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise DatabaseError(f"news database {self.name}: {_first_line(exc)}") from None

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection behind a cut link may not close cleanly
                async with asyncio.timeout(1.0):
                    await conn.close()

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._lock:
            await self._run(_placeholders(sql), params)
            return int(self._rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            return await self._run(_placeholders(sql), params)


def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (our SQL has no ``?`` or ``%`` in literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
