"""A short-lived, bounded lookup cache shared by the storage backends.

Entries are trusted for `seconds`, evicted least recently used past
`capacity` (counted in whatever `weight` measures: bytes, entries). Only
successful lookups are stored, never failures: a file that appears is
served at once, one that changes or disappears is served as it was for at
most `seconds`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class TimedCache(Generic[V]):
    def __init__(self, seconds: float, capacity: int, weight: Callable[[V], int] = lambda value: 1) -> None:
        self.seconds = seconds
        self.capacity = capacity
        self._weight = weight
        self._used = 0
        self._entries: OrderedDict[str, tuple[float, V, int]] = OrderedDict()

    def get(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: str, value: V, now: float) -> None:
        weight = self._weight(value)
        if self.seconds <= 0 or weight > self.capacity:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (now + self.seconds, value, weight)
        self._used += weight
        while self._used > self.capacity:
            self._drop(next(iter(self._entries)))

    def forget(self, key: str) -> None:
        if key in self._entries:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self._used -= self._entries.pop(key)[2]
