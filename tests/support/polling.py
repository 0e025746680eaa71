"""Waiting for something to become true, bounded (a liveness bound, never a timing assertion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call `probe` until `done(value)` or `timeout` seconds (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
