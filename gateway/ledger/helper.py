"""The ledger's helper process: one per edge worker, doing all of the ledger's work outside the worker.

An edge worker's event loop must not share its GIL with threads that
talk to SQLite and post to webhooks: each SQLite or socket call hands the
GIL over, every hand-over costs the loop a forced switch, and measured
with the ledger's threads in the worker that was a fifth of its request
rate. So the worker only encodes what it answered as JSON lines every
50 ms (one msgspec call) and sends them, with the inline plays among them,
over a socketpair to this process, which:

- commits them to the host's outbox, folding the plays into listening
  sessions (`writer.Writer`), every `FLUSH_SECONDS` (100 ms);
- runs the `delivery.Deliverer` (one per host delivers: an flock);
- sends its worker what it did (`stats.Stats`), which the worker counts in
  its metrics.

Its lifetime is the socket's: the worker's end closing (a clean stop, or
the worker killed) is the signal to commit what it has and exit. SIGTERM
and SIGINT are ignored, since a worker draining after SIGTERM still has
answers to record. It runs at a lower CPU priority (nice 10), so that on a
busy host the edge goes first and the ledger catches up in the gaps.

The socketpair is private to the worker and its helper, so pickle (fast,
in C) is safe on it: nothing else can write there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import socket
import sqlite3
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .delivery import Deliverer, Delivery
from .events import Record
from .stats import Stats
from .writer import Writer

log = logging.getLogger("gateway.ledger")

FLUSH_SECONDS = 0.1  # how long events wait here before their commit
NICE = 10
QUEUE_LIMIT = 100_000  # events held here at most while the outbox cannot be written
FINAL_ATTEMPTS = 3  # commits tried at the end before what is left is dropped
_LENGTH = struct.Struct(">I")
Batch = tuple[bytes, int, list[tuple[str, Record]]]  # a worker's events: JSON lines, how many, the plays among them


@dataclass(frozen=True)
class HelperConfig:
    """The first message a worker sends its helper."""

    directory: Path
    replica: str
    idle_seconds: float
    max_events: int
    delivery: Delivery


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Messages out of a byte stream of frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + length:
                break
            messages.append(pickle.loads(self._buffer[_LENGTH.size : _LENGTH.size + length]))
            del self._buffer[: _LENGTH.size + length]
        return messages


def main(argv: list[str] | None = None) -> int:
    (descriptor,) = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s", stream=sys.stderr)
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    channel = socket.socket(fileno=int(descriptor))
    channel.settimeout(5.0)  # for sending reports: a worker that reads none for that long loses one
    frames = Frames()
    config: HelperConfig | None = None
    queued: list[Batch] = []
    while config is None:
        try:
            data = channel.recv(1 << 20)
        except TimeoutError:
            continue
        if not data:
            return 0
        for message in frames.feed(data):
            if config is None:
                config = message
            else:
                queued.append(message)
    _serve(channel, frames, config, queued)
    return 0


def _serve(channel: socket.socket, frames: Frames, config: HelperConfig, queued: list[Batch]) -> None:
    stats = Stats()
    writer = Writer(config.directory, config.replica, config.idle_seconds, config.max_events,
                    config.delivery.batch_size, stats)  # fmt: skip
    deliverer = Deliverer(config.directory, config.delivery, config.max_events, config.idle_seconds, stats,
                          writer.committed)  # fmt: skip
    deliverer.start()
    open_ = True
    failures = 0
    due = time.monotonic() + FLUSH_SECONDS
    try:
        while open_ or queued:
            wait = max(0.0, due - time.monotonic())
            if open_:
                ready, _, _ = select.select([channel], [], [], wait)
                if ready:
                    try:
                        data = channel.recv(1 << 20)
                    except OSError:  # reset: the worker was killed
                        data = b""
                    queued.extend(frames.feed(data))
                    open_ = bool(data)  # no data: the worker is done, or gone; commit what is here, then stop
                if open_ and time.monotonic() < due:
                    continue
            elif wait:
                time.sleep(wait)
            due = time.monotonic() + FLUSH_SECONDS
            if queued:
                count = sum(batch[1] for batch in queued)
                try:
                    writer.write(b"".join(batch[0] for batch in queued), count,
                                 [play for batch in queued for play in batch[2]])  # fmt: skip
                    queued, failures = [], 0
                except sqlite3.Error:  # a full disk, a lock held too long: kept, and tried again
                    failures += 1
                    log.exception("ledger: writing %d events to the outbox failed; trying again", count)
                    if count > QUEUE_LIMIT or (not open_ and failures >= FINAL_ATTEMPTS):
                        writer.dropped(count, "the oldest queued: the outbox cannot be written")
                        queued = []
            _report(channel, stats)
    finally:
        deliverer.stop()
        _report(channel, stats)
        writer.close()
        channel.close()


def _report(channel: socket.socket, stats: Stats) -> None:
    report = stats.take()
    if report is not None:
        with contextlib.suppress(OSError):  # the worker is gone: nobody to count it
            channel.sendall(frame(report))


if __name__ == "__main__":
    sys.exit(main())
