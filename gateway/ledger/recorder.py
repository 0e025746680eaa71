"""The ledger as an edge worker sees it: `record()` on the event loop, everything else in a helper process.

`record()` appends the edge's record (a tuple of an `Access`'s fields) to
a list: no I/O, no lock, no thread to hand the GIL to. Every
`FLUSH_SECONDS` a task on the event loop turns what is there into `access`
events (ids, fingerprints, JSON lines: one msgspec call) and sends them,
with the inline plays among them, in one non-blocking write to the
worker's helper process (`helper`), which does the rest: the outbox,
sessions, delivery. The helper reports what it did, and this side counts
it in the metrics (an event is counted in `gateway_ledger_events_total`
once the helper has committed it).

Bounded: while the helper does not keep up (or is being replaced after a
crash), at most `QUEUE_LIMIT` events wait here; further ones are dropped
and counted. A helper that dies is started again within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..common.caching import LruCache
from ..common.files import private_directory
from ..common.metrics import (
    LEDGER_DELIVERED,
    LEDGER_DELIVERY_SECONDS,
    LEDGER_DROPPED,
    LEDGER_EVENTS,
    LEDGER_FAILURES,
    LEDGER_PENDING,
    MULTIPROC_ENV,
    child,
)
from .audio import Layout
from .delivery import Delivery
from .events import Record, encode_accesses
from .fingerprint import fingerprint, fingerprint_key
from .helper import Frames, HelperConfig, frame

log = logging.getLogger("gateway.ledger")

FLUSH_SECONDS = 0.05  # how long an event waits in the worker before it is sent to the helper
QUEUE_LIMIT = 100_000  # events a worker holds at most while its helper does not take them
FRAME_LIMIT = 5_000  # events encoded in one tick at most (a backlog costs the loop 20 ms a tick, not a second)
RESPAWN_SECONDS = 1.0  # after a helper died, before the next is started
STOP_SECONDS = 15.0  # at shutdown, how long the helper may take to commit and stop
LAYOUTS = 4096  # layouts of representations remembered per worker
FINGERPRINTS = 4096  # fingerprints remembered per worker, by token


class Ledger:
    def __init__(
        self, *, directory: Path, shared_key: bytes, replica: str, idle_seconds: float, max_events: int,
        delivery: Delivery,
    ) -> None:  # fmt: skip
        self.directory = directory
        self.replica = replica
        self._config = HelperConfig(directory, replica, idle_seconds, max_events, delivery)
        self._key = fingerprint_key(shared_key)
        self._fingerprints: dict[str, str] = {}  # by token: a player presents its link again and again
        self._items: list[Record] = []
        self._out = bytearray()  # a frame not yet sent (whole or in part)
        self._out_count = 0  # events in it
        self._frames = Frames()
        self._channel: socket.socket | None = None
        self._helper: subprocess.Popen[bytes] | None = None
        self._respawn_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        # Where the audio lies in each representation played inline, by (storage, path, ETag).
        self.layouts: LruCache[tuple[str, str, str], tuple[Layout | None]] = LruCache(LAYOUTS)

    # -- the edge's side (event loop) -------------------------------------------

    def record(self, access: Record) -> None:
        """One answer: a tuple of the fields of an `Access`, in their order."""
        if len(self._items) >= QUEUE_LIMIT:
            self._dropped(1, "the newest: this worker's queue is full, its helper process does not keep up")
            return
        self._items.append(access)

    # -- start and stop ---------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(private_directory, self.directory)
        await asyncio.to_thread(self._spawn)
        self._task = asyncio.get_running_loop().create_task(self._flushing())

    async def stop(self) -> None:
        """Send what is queued, let the helper commit it and stop delivering, and count what it reports."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._finish)

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The helper counts nothing in Prometheus itself: it reports to this worker.
        env = {name: value for name, value in os.environ.items() if name != MULTIPROC_ENV}
        try:
            self._helper = subprocess.Popen(
                [sys.executable, "-m", "gateway.ledger.helper", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            log.error("ledger: the helper process could not be started: %s", exc)
            self._respawn_at = time.monotonic() + RESPAWN_SECONDS
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self._channel = ours
        self._frames = Frames()
        self._out, self._out_count = bytearray(frame(self._config)), 0

    # -- every FLUSH_SECONDS, on the event loop -----------------------------------

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                self._flush()
            except Exception:  # never let the ledger stop recording for good
                log.exception("ledger: handing events to the helper process failed")

    def _flush(self) -> None:
        if self._channel is None:
            if time.monotonic() < self._respawn_at:
                return
            self._spawn()
            if self._channel is None:
                return
        channel = self._channel
        try:
            while data := channel.recv(1 << 16):
                for report in self._frames.feed(data):
                    self._count(report)
            self._lost("the ledger's helper process ended")
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            self._lost(f"the ledger's helper process is unreachable: {exc}")
            return
        if not self._out and self._items:
            taken, self._items = self._items[:FRAME_LIMIT], self._items[FRAME_LIMIT:]
            self._out, self._out_count = bytearray(self._encoded(taken)), len(taken)
        if self._out:
            try:
                del self._out[: channel.send(self._out)]
            except BlockingIOError:
                return  # the helper is behind: try again at the next tick
            except OSError as exc:
                self._lost(f"the ledger's helper process is unreachable: {exc}")
                return
            if not self._out:
                self._out_count = 0

    def _lost(self, why: str) -> None:
        """The helper is gone: what was on its way to it is lost; another is started shortly."""
        log.error("ledger: %s; starting another", why)
        if self._out_count:
            self._dropped(self._out_count, "in the hands of a helper process that died")
        self._out, self._out_count = bytearray(), 0
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._helper is not None:
            with contextlib.suppress(OSError):
                self._helper.kill()
            self._helper.wait()
            self._helper = None
        self._respawn_at = time.monotonic() + RESPAWN_SECONDS

    def _finish(self) -> None:
        """At shutdown (in a thread): hand everything over, wait for the helper's last report and its exit."""
        channel, helper = self._channel, self._helper
        if channel is None or helper is None:
            if self._items:
                self._dropped(len(self._items), "no helper process to hand them to at shutdown")
            return
        deadline = time.monotonic() + STOP_SECONDS
        try:
            channel.settimeout(STOP_SECONDS)
            channel.sendall(self._out + (self._encoded(self._items) if self._items else b""))
            self._items, self._out, self._out_count = [], bytearray(), 0
            channel.shutdown(socket.SHUT_WR)  # the helper commits what it has, stops delivering, reports, exits
            while (left := deadline - time.monotonic()) > 0:
                channel.settimeout(left)
                if not (data := channel.recv(1 << 16)):
                    break
                for report in self._frames.feed(data):
                    self._count(report)
        except OSError as exc:
            log.error("ledger: the helper process could not be stopped cleanly: %s", exc)
        finally:
            channel.close()
            self._channel = None
            try:
                helper.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
            self._helper = None

    def _encoded(self, records: list[Record]) -> bytes:
        """`records` as the helper takes them: one frame of JSON lines, their count, the plays among them."""
        return frame(encode_accesses(records, self._fingerprint, self.replica))

    def _fingerprint(self, token: str) -> str:
        found = self._fingerprints.get(token)
        if found is None:
            if len(self._fingerprints) >= FINGERPRINTS:
                self._fingerprints.clear()
            found = self._fingerprints[token] = fingerprint(self._key, token)
        return found

    # -- counting -------------------------------------------------------------------

    def _count(self, report: dict[str, Any]) -> None:
        for name, count in report["counts"].items():
            kind, _, label = name.partition(":")
            if kind == "recorded":
                child(LEDGER_EVENTS, label).inc(count)
            elif kind == "dropped":
                LEDGER_DROPPED.inc(count)
            elif kind == "delivered":
                LEDGER_DELIVERED.inc(count)
            elif kind == "failed":
                child(LEDGER_FAILURES, label).inc(count)
        for seconds in report["attempts"]:
            LEDGER_DELIVERY_SECONDS.observe(seconds)
        if report["pending"] is not None:
            LEDGER_PENDING.set(report["pending"])

    def _dropped(self, count: int, why: str) -> None:
        LEDGER_DROPPED.inc(count)
        if not self._warned:
            self._warned = True
            log.warning("ledger: dropping events (%s); counted in gateway_ledger_dropped_total, not logged again "
                        "by this process", why)  # fmt: skip
