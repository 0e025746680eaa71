"""The outbox: events on local disk until every webhook has them (SQLite, WAL).

One database per host, `<ledger dir>/outbox.sqlite3`, shared by every
worker (each writes through its own connection, from its writer thread)
and by the one deliverer. Tables:

    outbox    seq (AUTOINCREMENT: never reused, so a cursor never skips a new event), id, body (the JSON)
    cursors   per webhook URL, the last seq it acknowledged
    sessions  listening sessions not yet closed: key, last activity, state (JSON)

A row leaves `outbox` once every configured URL has acknowledged it, or
when the bound (`max_events`) drops the oldest. Sessions live here rather
than in a worker's memory because a player's range requests land on any
worker, and so that a restart or a SIGKILL loses no session either.

Every method is blocking: call it from a thread, never the event loop.
WAL with `synchronous=NORMAL`: a commit survives the process being killed
(the WAL is in the kernel's page cache); only a power loss may take the
last commits, which is the price of not waiting for the disk each time.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .events import Access, dumps, listen_event, merge, new_session

DATABASE = "outbox.sqlite3"
BUSY_SECONDS = 10.0  # how long a connection waits for another's write lock (in its own thread)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (url TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, last REAL NOT NULL, state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_last ON sessions (last);
"""
Row = tuple[str, str]  # (id, JSON body)
Play = tuple[str, Access, str]  # (session key, the access, the link's fingerprint)


@dataclass(frozen=True, slots=True)
class Committed:
    """What one transaction recorded, and what the bound dropped to make room."""

    access: int = 0
    listen: int = 0
    dropped: int = 0


class Outbox:
    def __init__(self, directory: Path, max_events: int) -> None:
        self.max_events = max_events
        self.db = sqlite3.connect(
            directory / DATABASE, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self._writing():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self.db.execute(statement)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction, the write lock taken at once (so a read-then-write cannot lose an update)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- recording -------------------------------------------------------------

    def append(self, rows: Sequence[Row], plays: Sequence[Play], idle: float, replica: str) -> Committed:
        """Access events, and the sessions their plays belong to (closing those idle longer than `idle`)."""
        with self._writing():
            self.db.executemany("INSERT INTO outbox (id, body) VALUES (?, ?)", rows)
            closed = []
            for key, access, fingerprint in plays:
                found = self.db.execute("SELECT last, state FROM sessions WHERE key = ?", (key,)).fetchone()
                if found is not None and access.began - found[0] <= idle:
                    state = merge(json.loads(found[1]), access)
                else:
                    if found is not None:
                        closed.append(listen_event(json.loads(found[1])))
                    state = new_session(access, fingerprint, replica)
                self.db.execute(
                    "INSERT OR REPLACE INTO sessions (key, last, state) VALUES (?, ?, ?)",
                    (key, state["ended"], dumps(state)),
                )
            self._insert(closed)
            dropped = self._bound()
        return Committed(len(rows), len(closed), dropped)

    def sweep(self, now: float, idle: float) -> Committed:
        """Close the sessions idle for longer than `idle` seconds: their `listen` events join the outbox."""
        with self._writing():
            found = self.db.execute("SELECT key, state FROM sessions WHERE last < ?", (now - idle,)).fetchall()
            self._insert([listen_event(json.loads(state)) for _, state in found])
            self.db.executemany("DELETE FROM sessions WHERE key = ?", [(key,) for key, _ in found])
            dropped = self._bound() if found else 0
        return Committed(0, len(found), dropped)

    def _insert(self, events: list[dict[str, object]]) -> None:
        if events:
            self.db.executemany("INSERT INTO outbox (id, body) VALUES (?, ?)", [(e["id"], dumps(e)) for e in events])

    def _ends(self) -> tuple[int, int] | None:
        """The first and the last seq kept. Two queries: SQLite answers min() or max() alone from the index, but
        scans the whole table for both at once."""
        low = self.db.execute("SELECT min(seq) FROM outbox").fetchone()[0]
        if low is None:
            return None
        return int(low), int(self.db.execute("SELECT max(seq) FROM outbox").fetchone()[0])

    def _bound(self) -> int:
        """Drop the oldest events past `max_events`; how many. (seq has no gaps but those the bound made.)"""
        ends = self._ends()
        if ends is None or ends[1] - ends[0] + 1 <= self.max_events:
            return 0
        return self.db.execute("DELETE FROM outbox WHERE seq <= ?", (ends[1] - self.max_events,)).rowcount

    # -- delivering ------------------------------------------------------------

    def cursor(self, url: str) -> int:
        """The last seq `url` acknowledged; a new URL starts with every event still kept."""
        with self._writing():
            found = self.db.execute("SELECT seq FROM cursors WHERE url = ?", (url,)).fetchone()
            if found is not None:
                return int(found[0])
            ends = self._ends()
            if ends is None:
                issued = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
                start = int(issued[0]) if issued else 0
            else:
                start = ends[0] - 1
            self.db.execute("INSERT INTO cursors (url, seq) VALUES (?, ?)", (url, start))
            return start

    def forget_cursors(self, urls: Sequence[str]) -> None:
        """Cursors of URLs no longer configured no longer hold events back."""
        with self._writing():
            marks = ",".join("?" * len(urls))
            self.db.execute(f"DELETE FROM cursors WHERE url NOT IN ({marks})", tuple(urls))
            self._prune(urls)

    def batch(self, after: int, limit: int) -> list[tuple[int, str, str]]:
        """Up to `limit` events after seq `after`: (seq, id, body)."""
        return self.db.execute(
            "SELECT seq, id, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
        ).fetchall()

    def kept(self, first: int, last: int) -> int:
        """How many events from seq `first` to `last` are still kept (the bound may have dropped some)."""
        return int(
            self.db.execute("SELECT count(*) FROM outbox WHERE seq BETWEEN ? AND ?", (first, last)).fetchone()[0]
        )

    def acknowledged(self, url: str, seq: int, urls: Sequence[str]) -> None:
        """`url` has every event up to `seq`; events every URL has leave the outbox."""
        with self._writing():
            self.db.execute("UPDATE cursors SET seq = max(seq, ?) WHERE url = ?", (seq, url))
            self._prune(urls)

    def _prune(self, urls: Sequence[str]) -> None:
        marks = ",".join("?" * len(urls))
        counted, low = self.db.execute(
            f"SELECT count(*), min(seq) FROM cursors WHERE url IN ({marks})", tuple(urls)
        ).fetchone()
        if counted == len(urls) and low is not None:
            self.db.execute("DELETE FROM outbox WHERE seq <= ?", (low,))

    def pending(self) -> int:
        """Events not yet delivered to every URL (those are deleted as soon as they are)."""
        ends = self._ends()
        return 0 if ends is None else ends[1] - ends[0] + 1
