"""The session registry: which worker holds which session, under which lease.

A row per session: its ``holder`` (a worker's id and incarnation), the
``url`` its viewers' signalling goes to, an ``epoch`` that grows by one with
every claim, and a lease (``lease_until``, on the database's clock, so the
workers' clocks do not matter). A worker holds a session while it renews
the lease; another may claim it once the lease ran out, or at once when the
holder is known dead (its MQTT last will: ``expire``). The news queue's
writes carry the epoch (``NewsQueue(epoch=)``), so a worker that lost its
session can no longer move the reading position: fencing, in the same
statement as the write.

``wanted`` sessions are kept running: one whose lease ran out is an
``orphan`` for the workers to restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from anchor.news.database import Database


@dataclass(frozen=True, slots=True)
class Holding:
    """A session as the registry has it."""

    session: str
    holder: str
    url: str
    epoch: int
    live: bool  # the lease has not run out


class SessionRegistry:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, session: str, holder: str, url: str, lease_s: float, *, epoch: int | None = None
    ) -> Holding:
        """Take ``session`` for ``holder`` (a new epoch) if no one else holds a live lease on it, and, with
        ``epoch``, only if it is still at that epoch (a restart asked for one lost holder is carried out
        once, however many workers were asked). The holding returned says who holds it now."""
        now = self.db.now
        guard = f"anchor_sessions.lease_until < {now} OR anchor_sessions.holder = excluded.holder"
        if epoch is not None:
            guard = f"({guard}) AND anchor_sessions.epoch = {int(epoch)}"
        row = await self.db.fetchone(
            "INSERT INTO anchor_sessions (id, holder, url, epoch, lease_until, wanted) "
            f"VALUES (?, ?, ?, 1, {now} + ?, 1) "
            "ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, url = excluded.url, "
            "epoch = anchor_sessions.epoch + 1, lease_until = excluded.lease_until, wanted = 1 "
            f"WHERE {guard} RETURNING epoch",
            (session, holder, url, lease_s),
        )
        if row is not None:
            return Holding(session, holder, url, int(row[0]), True)
        current = await self.lookup(session)
        assert current is not None, "the conflicting row exists"
        return current

    async def renew(self, session: str, epoch: int, lease_s: float) -> bool:
        """Extend the lease of ``epoch``; False when the session moved on (this holder must stop it)."""
        changed = await self.db.execute(
            f"UPDATE anchor_sessions SET lease_until = {self.db.now} + ? WHERE id = ? AND epoch = ?",
            (lease_s, session, epoch),
        )
        return changed == 1

    async def release(self, session: str, epoch: int, *, wanted: bool) -> None:
        """Give ``session`` up: ``wanted`` ones are restarted by another worker at once (a drain)."""
        await self.db.execute(
            "UPDATE anchor_sessions SET holder = '', lease_until = 0, wanted = ? WHERE id = ? AND epoch = ?",
            (int(wanted), session, epoch),
        )

    async def expire(self, holder: str) -> int:
        """End every lease of ``holder`` now (it is known dead); the number of sessions it held."""
        return await self.db.execute(
            "UPDATE anchor_sessions SET lease_until = 0 WHERE holder = ? AND lease_until > 0", (holder,)
        )

    async def lookup(self, session: str) -> Holding | None:
        row = await self.db.fetchone(
            f"SELECT id, holder, url, epoch, lease_until >= {self.db.now} FROM anchor_sessions WHERE id = ?",
            (session,),
        )
        return Holding(row[0], row[1], row[2], int(row[3]), bool(row[4])) if row else None

    async def orphans(self, limit: int = 100) -> list[Holding]:
        """Wanted sessions whose lease ran out: to be started again somewhere."""
        rows = await self.db.fetchall(
            "SELECT id, holder, url, epoch FROM anchor_sessions "
            f"WHERE wanted = 1 AND lease_until < {self.db.now} ORDER BY id LIMIT ?",
            (limit,),
        )
        return [Holding(r[0], r[1], r[2], int(r[3]), False) for r in rows]
