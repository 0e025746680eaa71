"""Structured access log: one JSON line per edge request, on standard output.

Never the whole token or the decrypted path: the token is cut to 8
characters, enough to find a link in support tickets, not to replay it.

Written the way nginx writes its own: the request path only encodes the
line (msgspec, about a microsecond) and appends it to a buffer; a thread
writes the buffer out about ten times a second, or sooner when it fills.
Python's `logging` (a record, a formatter, a flushed write per request)
cost about a third of the small-file request rate. A slow or blocked sink
never stalls a request: the buffer is bounded, and what does not fit is
dropped, counted (`gateway_access_log_dropped_total`) and said once on
stderr. What is buffered is written at shutdown (after the drain, and at
exit), so SIGTERM loses no line.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import threading
import time
from typing import Any

import msgspec

from ..common.metrics import ACCESS_LOG_DROPPED

log = logging.getLogger("gateway.access")
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024
MAX_BUFFERED_BYTES = 4 * 1024 * 1024


class AccessLog:
    """Lines buffered in memory and written by a thread of their own."""

    def __init__(self, fd: int = 1, max_buffered: int = MAX_BUFFERED_BYTES) -> None:
        self.fd = fd
        self.max_buffered = max_buffered
        self._encode = msgspec.json.Encoder().encode
        self._lines: list[bytes] = []
        self._buffered = 0
        self._dropped = 0
        self._wake = threading.Condition(threading.Lock())
        self._closed = False
        self._second = -1
        self._stamp = ""
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, fields: dict[str, Any]) -> None:
        """Buffer one line; `time` is added here, in UTC with milliseconds."""
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = self._encode({"time": f"{self._stamp}.{int(now % 1 * 1000):03d}Z", **fields}) + b"\n"
        with self._wake:
            if self._buffered + len(line) > self.max_buffered:
                self._drop()
                return
            self._lines.append(line)
            self._buffered += len(line)
            if self._buffered >= FLUSH_BYTES:
                self._wake.notify()

    def _drop(self) -> None:
        ACCESS_LOG_DROPPED.inc()
        self._dropped += 1
        if self._dropped == 1:
            log.warning("access log: the output does not keep up; lines are dropped (gateway_access_log_dropped_total)")

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._lines and not self._closed:
                    self._wake.wait(FLUSH_SECONDS)
                lines, self._lines, self._buffered = self._lines, [], 0
                closed = self._closed
            self._write(lines)
            if closed:
                return

    def _write(self, lines: list[bytes]) -> None:
        """Whole lines, at most PIPE_BUF bytes a write: on a pipe (a container's stdout) a write
        that small is atomic, so the lines of several workers never interleave mid-line."""
        batch = bytearray()
        try:
            for line in lines:
                if batch and len(batch) + len(line) > select.PIPE_BUF:
                    self._write_all(batch)
                    batch.clear()
                batch += line
            if batch:
                self._write_all(batch)
        except OSError as exc:  # a closed or broken output: nothing more can be said there
            log.error("access log: cannot write to the output: %s", exc)

    def _write_all(self, data: bytearray) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def flush(self) -> None:
        """Write what is buffered now, from the calling thread (the writer may be writing too)."""
        with self._wake:
            lines, self._lines, self._buffered = self._lines, [], 0
        self._write(lines)

    def close(self) -> None:
        """Write everything buffered and stop the thread (idempotent)."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.flush()
