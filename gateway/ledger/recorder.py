"""The ledger as one edge worker sees it: `record()` on the event loop, the rest in threads.

`record()` appends the edge's `Access` to an in-memory queue: a few
hundred nanoseconds, no I/O, no lock the event loop can wait on. A writer
thread wakes every `FLUSH_SECONDS`, turns what queued into events (ids,
fingerprints, JSON) and commits them to the outbox in one transaction,
with the listening sessions their plays belong to; an event is counted in
`gateway_ledger_events_total` once committed. The queue is bounded
(`QUEUE_LIMIT`): if the disk stalls for that long, further events are
dropped and counted rather than growing the worker's memory.

Delivery (`delivery.Deliverer`) runs in another thread and in at most one
process of the host at a time.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path

from ..common.caching import LruCache
from ..common.files import private_directory
from ..common.metrics import LEDGER_DROPPED, LEDGER_EVENTS, child
from .audio import Layout
from .delivery import Deliverer, Delivery
from .events import ACCESS, LISTEN, Access, access_event, session_key
from .fingerprint import fingerprint, fingerprint_key
from .outbox import Committed, Outbox, Play, Row

log = logging.getLogger("gateway.ledger")

FLUSH_SECONDS = 0.05  # how long an event may wait in memory before its commit
QUEUE_LIMIT = 100_000  # events a worker holds in memory at most (a stalled disk)
BATCH_LIMIT = 5_000  # events per transaction
RETRY_SECONDS = 1.0  # after a failed commit
LAYOUTS = 4096  # layouts of representations remembered per worker
FINGERPRINTS = 4096  # fingerprints of tokens remembered by the writer (a player presents its link again and again)


class Ledger:
    def __init__(
        self, *, directory: Path, shared_key: bytes, replica: str, idle_seconds: float, max_events: int,
        delivery: Delivery,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.replica = replica
        self.idle_seconds = idle_seconds
        self.max_events = max_events
        self._key = fingerprint_key(shared_key)
        self._fingerprints: LruCache[str, str] = LruCache(FINGERPRINTS)  # the writer thread's alone
        self._queue: collections.deque[Access] = collections.deque()
        self._stopping = threading.Event()
        self._writer: threading.Thread | None = None
        self._outbox: Outbox | None = None
        self._warned = False
        # Where the audio lies in each representation played inline, by (storage, path, ETag).
        self.layouts: LruCache[tuple[str, str, str], tuple[Layout | None]] = LruCache(LAYOUTS)
        self.deliverer = Deliverer(directory, delivery, max_events, idle_seconds, self._counted)

    # -- the edge's side (event loop) -------------------------------------------

    def record(self, access: Access) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self._dropped(1, "the newest: this worker's queue is full, the outbox is not being written")
            return
        self._queue.append(access)

    # -- start and stop (blocking: run them in a thread) -------------------------

    def start(self) -> None:
        private_directory(self.directory)
        self._outbox = Outbox(self.directory, self.max_events)
        self._writer = threading.Thread(target=self._write, name="ledger-writer", daemon=True)
        self._writer.start()
        self.deliverer.start()

    def stop(self) -> None:
        """Stop delivering, write what is queued, close."""
        self.deliverer.stop()
        self._stopping.set()
        if self._writer is not None:
            self._writer.join()
        if self._outbox is not None:
            self._outbox.close()

    # -- the writer thread -------------------------------------------------------

    def _write(self) -> None:
        rows: list[Row] = []
        plays: list[Play] = []
        while True:
            stopping = self._stopping.wait(FLUSH_SECONDS)
            while self._queue and len(rows) < BATCH_LIMIT:
                self._convert(self._queue.popleft(), rows, plays)
            if rows:
                try:
                    assert self._outbox is not None
                    self._counted(self._outbox.append(rows, plays, self.idle_seconds, self.replica))
                    rows, plays = [], []
                except Exception:  # a full disk, a lock held too long: kept, and tried again
                    log.exception("ledger: writing %d events to the outbox failed; trying again", len(rows))
                    if len(rows) + len(self._queue) > QUEUE_LIMIT:
                        self._dropped(len(rows), "the oldest queued: the outbox cannot be written")
                        rows, plays = [], []
                    if self._stopping.wait(RETRY_SECONDS):
                        return
                    continue
            if stopping and not self._queue:
                return

    def _convert(self, access: Access, rows: list[Row], plays: list[Play]) -> None:
        link = self._fingerprints.get(access.token)
        if link is None:
            link = fingerprint(self._key, access.token)
            self._fingerprints.put(access.token, link)
        rows.append(access_event(access, link, self.replica))
        if access.play is not None:
            plays.append((session_key(link, access), access, link))

    def _counted(self, committed: Committed) -> None:
        if committed.access:
            child(LEDGER_EVENTS, ACCESS).inc(committed.access)
        if committed.listen:
            child(LEDGER_EVENTS, LISTEN).inc(committed.listen)
        if committed.dropped:
            self._dropped(committed.dropped, f"the oldest undelivered: the outbox is full ({self.max_events} events)")

    def _dropped(self, count: int, why: str) -> None:
        LEDGER_DROPPED.inc(count)
        if not self._warned:
            self._warned = True
            log.warning("ledger: dropping events (%s); counted in gateway_ledger_dropped_total, not logged again "
                        "by this process", why)  # fmt: skip
