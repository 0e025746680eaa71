"""Structured access log: one JSON line per edge request, on standard output.

Never the whole token or the decrypted path: the token is cut to 8
characters, enough to find a link in support tickets, not to replay it.

Written the way nginx writes its own: the request path only encodes the
line (msgspec, about a microsecond) and appends it to a buffer; a thread
writes the buffer out about ten times a second, or sooner when it fills.
Python's `logging` (a record, a formatter, a flushed write per request)
cost about a third of the small-file request rate. A slow or blocked sink
never stalls a request: the buffer is bounded (in lines), and what does not fit is
dropped, counted (`gateway_access_log_dropped_total`) and said once on
stderr. What is buffered is written at shutdown (after the drain, and at
exit), so SIGTERM loses no line.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
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
FLUSH_LINES = 256  # the writer is woken early once this many lines wait
MAX_BUFFERED_LINES = 16384  # a few MiB: past it, lines are dropped


class AccessLog:
    """Lines buffered in memory and written by a thread of their own."""

    def __init__(self, fd: int = 1, max_buffered: int = MAX_BUFFERED_LINES) -> None:
        self.fd = fd
        self.max_buffered = max_buffered
        self._encode = msgspec.json.Encoder().encode
        # deque's append, popleft and len are atomic: the request path takes no lock.
        self._lines: collections.deque[bytes] = collections.deque()
        self._dropped = 0
        self._full = threading.Event()
        self._closed = False
        self._second = -1
        self._stamp = ""
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def stamp(self) -> str:
        """Now, in UTC with milliseconds, as the line's `time` (strftime once a second, not once a line)."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(now % 1 * 1000):03d}Z"

    def write(self, fields: dict[str, Any]) -> None:
        """Buffer one line (`fields` should start with `time`: see `stamp`)."""
        waiting = len(self._lines)
        if waiting >= self.max_buffered:
            self._drop()
            return
        self._lines.append(self._encode(fields) + b"\n")
        if waiting == FLUSH_LINES:
            self._full.set()

    def _drop(self) -> None:
        ACCESS_LOG_DROPPED.inc()
        self._dropped += 1
        if self._dropped == 1:
            log.warning("access log: the output does not keep up; lines are dropped (gateway_access_log_dropped_total)")

    def _run(self) -> None:
        while not self._closed:
            self._full.wait(FLUSH_SECONDS)
            self._full.clear()
            self._write(self._take())
        self._write(self._take())

    def _take(self) -> list[bytes]:
        lines = []
        with contextlib.suppress(IndexError):
            while True:
                lines.append(self._lines.popleft())
        return lines

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

    def close(self) -> None:
        """Write everything buffered and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._full.set()
        self._thread.join(timeout=5)
        self._write(self._take())  # whatever came after the thread's last look
