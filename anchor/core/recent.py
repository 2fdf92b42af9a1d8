"""Bounded memory of the most recent keys: flat memory over sessions that run for days."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class RecentMap(Generic[V]):
    """A mapping that keeps only the ``keep`` keys set most recently (setting a key again renews it)."""

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._keep = keep
        self._items: OrderedDict[str, V] = OrderedDict()

    def __setitem__(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._keep:
            self._items.popitem(last=False)

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def get(self, key: str, default: V | None = None) -> V | None:
        return self._items.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class RecentIds:
    """A set that remembers only the last ``keep`` ids."""

    def __init__(self, keep: int) -> None:
        self._ids: RecentMap[None] = RecentMap(keep)

    def add(self, item: str) -> None:
        self._ids[item] = None

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
