"""uvicorn's httptools protocol with the limits nginx has and uvicorn lacks.

A gateway that faces clients directly (the embedded default, a plain
`serve`) must not be held by anonymous connections that never finish a
request:

- **Head deadline** (nginx's `client_header_timeout`): a request head, from
  the first byte of a connection or of the next request on it, must be
  complete within `edge.header_timeout`, or the connection gets `408` and is
  closed. uvicorn has no such timer: a connection trickling one header line
  every few seconds stayed open for ever.
- **Bounded heads** (nginx's `large_client_header_buffers`): a request target
  over 16 KiB is `414`, a head over 32 KiB `431`, before more of it is read,
  so a flood of huge request lines costs no memory.
- **One piece of body buffered**: a write the socket cannot take whole
  pauses the sender until the socket has all of it (asyncio and uvloop
  wait until 64 KiB are buffered, so each slow download held two pieces
  besides the kernel's own buffer).
- **Bounded connections**: at most `edge.max_connections` per worker, and
  never so many that the worker runs out of file descriptors (then accept
  itself fails and everyone is reset). At the bound, the connection that
  has waited longest without a request in progress (a head still arriving,
  or idle between requests) is closed to make room; only when every
  connection is busy with a request is the new one refused (`503`). A
  client that sends its request at once is never the one waiting longest,
  so real clients keep being served while slow ones are shed.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_TARGET_BYTES = 16 * 1024
MAX_HEAD_BYTES = 32 * 1024
# Descriptors a worker keeps for itself beyond client connections: logs, the event loop, the
# thread pool, pool processes' pipes, storage files being read, S3 connections (added apart).
RESERVED_DESCRIPTORS = 128


def _reply(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


_TIMEOUT = _reply(b"408 Request Timeout")
_TARGET_TOO_LONG = _reply(b"414 URI Too Long")
_HEAD_TOO_LARGE = _reply(b"431 Request Header Fields Too Large")
_FULL = _reply(b"503 Service Unavailable")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: ClassVar[float] = 15.0
    max_connections: ClassVar[int] = 1024
    # Connections without a request in progress, oldest first (a dict keeps insertion order).
    _waiting: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}

    @classmethod
    def configure(cls, header_timeout: float, max_connections: int, reserved: int = 0) -> int:
        """Set the limits for this worker; returns the connection bound actually used.

        The soft descriptor limit is raised to the hard one (as nginx's
        `worker_rlimit_nofile`), then the bound kept below it.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        cls.header_timeout = header_timeout
        cls.max_connections = max(1, min(max_connections, soft - RESERVED_DESCRIPTORS - reserved))
        return cls.max_connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._shut = False

    # -- connections --------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        transport.set_write_buffer_limits(high=0)
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                self._shut_with(_FULL)
                return
            oldest._shut_with(b"")
        self._wait_for_a_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._shut:
            super().data_received(data)

    def _shut_with(self, answer: bytes) -> None:
        """Answer (or not) and close; nothing more is read."""
        self._stop_waiting()
        self._shut = True
        if not self.transport.is_closing():
            if answer:
                self.transport.write(answer)
            self.transport.close()

    # -- the head ----------------------------------------------------------

    def _wait_for_a_head(self) -> None:
        self._waiting.pop(self, None)
        self._waiting[self] = None  # last in line: it has only begun to wait
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)
            self._head_bytes = 0

    def _stop_waiting(self) -> None:
        self._waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._shut_with(_TIMEOUT)

    def on_message_begin(self) -> None:
        if self._shut:
            return
        super().on_message_begin()
        if self._head_timer is None:  # the next request on a kept-alive connection
            self._wait_for_a_head()

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > MAX_TARGET_BYTES:
            self._shut_with(_TARGET_TOO_LONG)
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            self._shut_with(_HEAD_TOO_LARGE)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._shut:
            return
        self._stop_waiting()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._shut:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._shut:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        idle = not self.pipeline and self.cycle is not None and self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self._waiting[self] = None  # idle between requests: uvicorn's keep-alive timer runs
