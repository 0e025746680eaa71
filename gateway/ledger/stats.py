"""What the ledger's helper process did, for the worker that owns it to count in its metrics.

The helper never touches Prometheus: with several workers its counts would
land in the shared multiprocess files beside the worker's, and with one
worker nobody would scrape them. Its threads add up here what they did;
the helper sends a `take()` to its worker every tick, and the worker
counts it (`recorder.Ledger`).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()  # recorded:<type>, dropped, delivered, failed:<reason>
        self._attempts: list[float] = []  # seconds of each delivery attempt
        self._pending: int | None = None  # the latest count, when this process delivers

    def add(self, name: str, count: int = 1) -> None:
        if count:
            with self._lock:
                self._counts[name] += count

    def attempt(self, seconds: float) -> None:
        with self._lock:
            self._attempts.append(seconds)

    def pending(self, count: int) -> None:
        with self._lock:
            self._pending = count

    def take(self) -> dict[str, Any] | None:
        """What happened since the last take (None: nothing)."""
        with self._lock:
            if not self._counts and not self._attempts and self._pending is None:
                return None
            report = {"counts": dict(self._counts), "attempts": self._attempts, "pending": self._pending}
            self._counts, self._attempts, self._pending = Counter(), [], None
        return report
