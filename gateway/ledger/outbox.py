"""The outbox: events on local disk until every webhook has them (SQLite, WAL).

One database per host, `<ledger dir>/outbox.sqlite3`, shared by every
worker (each worker's helper process writes through its own connection)
and by the one deliverer. Tables:

    outbox    chunks of events: seq, first and last (the chunk's event numbers), events (their JSON, one a
              line: compact JSON never holds a newline)
    counters  `events`: the last event number given (numbers are never reused, so a cursor never skips one)
    cursors   per webhook URL, the number of the last event it acknowledged
    sessions  listening sessions not yet closed: key, last activity, state (JSON)

Events are kept in chunks, one row per commit of a writer (about 100 ms
of a worker's answers, at most `chunk` events): a row per event would cost
an insert and a delete per request. A delivery is one or more whole
chunks. Chunks
leave `outbox` once every configured URL has acknowledged them, or when
the bound (`max_events`) drops the oldest events (the oldest chunk is cut
if only part of it must go). Sessions live here rather than in a worker's
memory because a player's range requests land on any worker, and so that
a restart or a SIGKILL loses no session either.

Every method is blocking: call it from a thread, never the event loop.
WAL with `synchronous=NORMAL`: a commit survives the process being killed
(the WAL is in the kernel's page cache); only a power loss or a kernel
crash may take the commits since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .events import Record, access, dumps, encode_lines, listen_event, merge, new_session

DATABASE = "outbox.sqlite3"
BUSY_SECONDS = 10.0  # how long a connection waits for another's write lock (in its own thread)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, first INTEGER NOT NULL, last INTEGER NOT NULL, events BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_by_last ON outbox (last);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('events', 0);
CREATE TABLE IF NOT EXISTS cursors (url TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, last REAL NOT NULL, state TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_by_last ON sessions (last);
"""
Play = tuple[str, Record, str]  # (session key, the access, the link's fingerprint)


@dataclass(frozen=True, slots=True)
class Committed:
    """What one transaction recorded, and what the bound dropped to make room."""

    access: int = 0
    listen: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Chunks:
    """Consecutive events read for a delivery: numbers `first` to `last`, as the texts of their chunks."""

    first: int
    last: int
    count: int
    texts: list[bytes]  # each the JSON lines of its events

    @property
    def body(self) -> bytes:
        """The delivery's body: `{"events": [...]}`, one event a line."""
        return b'{"events":[\n' + b"".join(self.texts)[:-1].replace(b"\n", b",\n") + b"\n]}"


class Outbox:
    def __init__(self, directory: Path, max_events: int, chunk: int = 500) -> None:
        self.max_events = max_events
        self.chunk = chunk  # events per row at most: a delivery batch holds one row or more
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

    def append(self, lines: bytes, count: int, plays: Sequence[Play], idle: float, replica: str) -> Committed:
        """`count` access events (JSON lines), and the sessions of their plays (closing those idle past `idle`)."""
        with self._writing():
            closed = []
            for key, record, fingerprint in plays:
                play = access(record)
                found = self.db.execute("SELECT last, state FROM sessions WHERE key = ?", (key,)).fetchone()
                if found is not None and play.began - found[0] <= idle:
                    state = merge(json.loads(found[1]), play)
                else:
                    if found is not None:
                        closed.append(listen_event(json.loads(found[1])))
                    state = new_session(play, fingerprint, replica)
                self.db.execute(
                    "INSERT OR REPLACE INTO sessions (key, last, state) VALUES (?, ?, ?)",
                    (key, state["ended"], dumps(state)),
                )
            self._insert(lines + encode_lines(closed), count + len(closed))
            dropped = self._bound()
        return Committed(count, len(closed), dropped)

    def sweep(self, now: float, idle: float) -> Committed:
        """Close the sessions idle for longer than `idle` seconds: their `listen` events join the outbox."""
        with self._writing():
            found = self.db.execute("SELECT key, state FROM sessions WHERE last < ?", (now - idle,)).fetchall()
            if not found:
                return Committed()
            self._insert(encode_lines(listen_event(json.loads(state)) for _, state in found), len(found))
            self.db.executemany("DELETE FROM sessions WHERE key = ?", [(key,) for key, _ in found])
            dropped = self._bound()
        return Committed(0, len(found), dropped)

    def _insert(self, lines: bytes, count: int) -> None:
        """`count` events, given as JSON lines, in chunks of at most `chunk`."""
        if not count:
            return
        (number,) = self.db.execute("SELECT value FROM counters WHERE name = 'events'").fetchone()
        rows = []
        if count <= self.chunk:
            rows.append((number + 1, number + count, lines))
            number += count
        else:
            split = lines.split(b"\n")[:-1]
            for start in range(0, count, self.chunk):
                part = split[start : start + self.chunk]
                rows.append((number + 1, number + len(part), b"\n".join(part) + b"\n"))
                number += len(part)
        self.db.executemany("INSERT INTO outbox (first, last, events) VALUES (?, ?, ?)", rows)
        self.db.execute("UPDATE counters SET value = ? WHERE name = 'events'", (number,))

    def _ends(self) -> tuple[int, int, int, int] | None:
        """(seq, first) of the oldest chunk and (seq, last) of the newest, from the index (no scan)."""
        oldest = self.db.execute("SELECT seq, first FROM outbox ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return None
        newest = self.db.execute("SELECT seq, last FROM outbox ORDER BY seq DESC LIMIT 1").fetchone()
        return oldest[0], oldest[1], newest[0], newest[1]

    def _bound(self) -> int:
        """Drop the oldest events past `max_events` (cutting the oldest chunk if need be); how many."""
        dropped = 0
        while (ends := self._ends()) is not None and ends[3] - ends[1] + 1 > self.max_events:
            excess = ends[3] - ends[1] + 1 - self.max_events
            seq, first = ends[0], ends[1]
            last, text = self.db.execute("SELECT last, events FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if last - first + 1 <= excess:
                self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                dropped += last - first + 1
            else:
                kept = text.split(b"\n")[excess:]  # the last is the empty one after the last newline
                self.db.execute(
                    "UPDATE outbox SET first = ?, events = ? WHERE seq = ?", (first + excess, b"\n".join(kept), seq)
                )
                dropped += excess
        return dropped

    # -- delivering ------------------------------------------------------------

    def cursor(self, url: str) -> int:
        """The number of the last event `url` acknowledged; a new URL starts with every event still kept."""
        with self._writing():
            found = self.db.execute("SELECT last FROM cursors WHERE url = ?", (url,)).fetchone()
            if found is not None:
                return int(found[0])
            ends = self._ends()
            if ends is None:
                (start,) = self.db.execute("SELECT value FROM counters WHERE name = 'events'").fetchone()
            else:
                start = ends[1] - 1
            self.db.execute("INSERT INTO cursors (url, last) VALUES (?, ?)", (url, start))
            return int(start)

    def forget_cursors(self, urls: Sequence[str]) -> None:
        """Cursors of URLs no longer configured no longer hold events back."""
        with self._writing():
            marks = ",".join("?" * len(urls))
            self.db.execute(f"DELETE FROM cursors WHERE url NOT IN ({marks})", tuple(urls))
            self._prune(urls)

    def batch(self, after: int, limit: int) -> Chunks | None:
        """The events after number `after`, in whole chunks, up to `limit` of them (one chunk at least)."""
        rows = self.db.execute(
            "SELECT first, last, events FROM outbox WHERE last > ? ORDER BY seq LIMIT ?", (after, limit)
        )
        first = last = count = 0
        texts: list[bytes] = []
        for row_first, row_last, text in rows:
            if row_first <= after:  # a chunk acknowledged in part: cannot happen (cursors move by chunks); kept safe
                text = b"\n".join(text.split(b"\n")[after - row_first + 1 :])
                row_first = after + 1
            if texts and count + row_last - row_first + 1 > limit:
                break
            texts.append(text)
            first, last, count = first or row_first, row_last, count + row_last - row_first + 1
        return Chunks(first, last, count, texts) if texts else None

    def whole(self, chunks: Chunks) -> bool:
        """Whether the bound has dropped none of `chunks` since they were read."""
        ends = self._ends()
        return ends is not None and ends[1] <= chunks.first

    def acknowledged(self, url: str, last: int, urls: Sequence[str]) -> None:
        """`url` has every event up to number `last`; chunks every URL has leave the outbox."""
        with self._writing():
            self.db.execute("UPDATE cursors SET last = max(last, ?) WHERE url = ?", (last, url))
            self._prune(urls)

    def _prune(self, urls: Sequence[str]) -> None:
        marks = ",".join("?" * len(urls))
        counted, low = self.db.execute(
            f"SELECT count(*), min(last) FROM cursors WHERE url IN ({marks})", tuple(urls)
        ).fetchone()
        if counted == len(urls) and low is not None:
            self.db.execute("DELETE FROM outbox WHERE last <= ?", (low,))

    def pending(self) -> int:
        """Events not yet delivered to every URL (their chunks are deleted as soon as they are)."""
        ends = self._ends()
        return 0 if ends is None else ends[3] - ends[1] + 1
