"""Which utterances of a session are live, and which were cancelled.

The cancelled set is the stale guard: channels, the pacer and subscribers
drop any frame whose utterance was cancelled, wherever it still travels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from anchor.core.frames import Frame
from anchor.core.recent import RecentIds


@dataclass(frozen=True, slots=True)
class Utterance:
    id: str
    uninterruptible: bool


class Utterances:
    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._counter = itertools.count(1)
        self._live: dict[str, Utterance] = {}
        self._cancelled = RecentIds(4096)

    def new(self, *, uninterruptible: bool = False) -> Utterance:
        utt = Utterance(f"{self._session_id}/u{next(self._counter)}", uninterruptible)
        self._live[utt.id] = utt
        return utt

    def is_live(self, utterance_id: str) -> bool:
        return utterance_id in self._live

    def is_stale(self, frame: Frame) -> bool:
        return bool(frame.utterance_id) and frame.utterance_id in self._cancelled

    def interruptible(self) -> frozenset[str]:
        return frozenset(u.id for u in self._live.values() if not u.uninterruptible)

    def live(self) -> frozenset[str]:
        return frozenset(self._live)

    def cancel(self, ids: frozenset[str]) -> frozenset[str]:
        """Mark ``ids`` cancelled; return those that were live."""
        was_live = frozenset(i for i in ids if self._live.pop(i, None) is not None)
        for i in ids:
            self._cancelled.add(i)
        return was_live

    def finish(self, utterance_id: str) -> bool:
        return self._live.pop(utterance_id, None) is not None
