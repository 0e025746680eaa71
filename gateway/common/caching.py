"""The one bounded cache: least recently used out first, optionally expiring, optionally weighed.

Every cache of the gateway is one of these, so that each has a bound (in
entries, or in whatever `weight` measures, such as bytes) and none can be
grown without limit by what clients send: the small-file cache, S3 lookups,
good signatures, probes, open renditions. `on_evict` releases what an entry
holds (a file descriptor) when it leaves, however it leaves.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(
        self,
        capacity: int,
        *,
        seconds: float = math.inf,
        weight: Callable[[V], int] | None = None,
        on_evict: Callable[[V], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.seconds = seconds  # how long an entry is trusted after it is put
        self._weight = weight
        self._on_evict = on_evict
        self._used = 0
        self._entries: OrderedDict[K, tuple[float, V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float = 0.0) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, now: float = 0.0) -> None:
        """Keep `value` (one too heavy for the whole cache, or a cache that trusts nothing, keeps none)."""
        weight = 1 if self._weight is None else self._weight(value)
        if self.seconds <= 0 or weight > self.capacity:
            if self._on_evict is not None:
                self._on_evict(value)
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (now + self.seconds, value, weight)
        self._used += weight
        while self._used > self.capacity:
            self._drop(next(iter(self._entries)))

    def forget(self, key: K) -> None:
        if key in self._entries:
            self._drop(key)

    def expire(self, now: float) -> None:
        """Drop the entries at the front (least recently used) that are past their time."""
        while self._entries:
            key, (expires, _, _) = next(iter(self._entries.items()))
            if expires > now:
                return
            self._drop(key)

    def clear(self) -> None:
        while self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: K) -> None:
        _, value, weight = self._entries.pop(key)
        self._used -= weight
        if self._on_evict is not None:
            self._on_evict(value)
