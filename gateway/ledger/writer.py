"""Events into the outbox: the access events a worker encoded, and its plays folded into listening sessions.

Runs in the ledger's helper process (`helper`), never in an edge worker:
its SQLite calls each hand the GIL over, which an event loop pays for.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .events import ACCESS, LISTEN, Record, access, session_key
from .outbox import Committed, Outbox
from .stats import Stats

log = logging.getLogger("gateway.ledger")


class Writer:
    def __init__(
        self, directory: Path, replica: str, idle_seconds: float, max_events: int, chunk: int, stats: Stats
    ) -> None:
        self.replica = replica
        self.idle_seconds = idle_seconds
        self.max_events = max_events
        self.stats = stats
        self.outbox = Outbox(directory, max_events, chunk)
        self._warned = False

    def close(self) -> None:
        self.outbox.close()

    def write(self, lines: bytes, count: int, plays: Sequence[tuple[str, Record]]) -> None:
        """Commit `count` access events (JSON lines) and the plays among them, as (fingerprint, record)
        (sqlite3.Error when the outbox cannot be written: try again)."""
        sessions = [(session_key(link, access(record)), record, link) for link, record in plays]
        self.committed(self.outbox.append(lines, count, sessions, self.idle_seconds, self.replica))

    def committed(self, committed: Committed) -> None:
        """Count what a transaction recorded, and what the bound dropped."""
        self.stats.add(f"recorded:{ACCESS}", committed.access)
        self.stats.add(f"recorded:{LISTEN}", committed.listen)
        if committed.dropped:
            self.dropped(committed.dropped, f"the oldest undelivered: the outbox is full ({self.max_events} events)")

    def dropped(self, count: int, why: str) -> None:
        self.stats.add("dropped", count)
        if not self._warned:
            self._warned = True
            log.warning(
                "ledger: dropping events (%s); counted in gateway_ledger_dropped_total, not logged again by this "
                "process", why,
            )  # fmt: skip
