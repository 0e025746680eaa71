"""Sending a planned answer: one message for bytes in memory, a stream with backpressure otherwise.

Knows ASGI messages and byte spans, nothing of tokens or storage: the
bytes come from any `ByteSource`. Headers go out with the first chunk of
body, so a source that fails before its first byte leaves the caller free
to answer with a clean error instead; after the headers, a failure aborts
the connection (the caller lets the exception through), so the client sees
a short transfer against Content-Length and can resume, never a complete-
looking body cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import Protocol

from .asgi import Message, Receive, Send
from .plan import Plan
from .ranges import Span
from .replies import send_reply

log = logging.getLogger("gateway.edge")


class ByteSource(Protocol):
    """Bytes of a representation: all of them in memory (`whole`), or read by span, `pace()` bytes at a time."""

    size: int
    whole: bytes | None

    def iter_bytes(self, start: int, stop: int, pace: Callable[[], int] | None = None) -> AsyncIterator[bytes]: ...


MIN_READ = 64 * 1024
# A read's worth of what the client takes in this long: a slow client (a player on a phone, a
# download manager's fifth connection) holds small reads, a fast one reads large.
PACE_SECONDS = 0.02


def _kernel_send_buffer(path: str = "/proc/sys/net/ipv4/tcp_wmem") -> int:
    """The most this host's kernel buffers for one socket (tcp_wmem's maximum; 4 MiB by default)."""
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


# Until this much of a body has gone out, a send that returns at once says only that the
# kernel took the bytes, not that the client did: the reads stay small until then.
TRUSTED_AFTER = _kernel_send_buffer()
# An empty piece of body: uvicorn's send waits while the transport is paused (flow control),
# then writes nothing. The edge's protocol pauses as soon as anything is buffered, so this
# returns once the socket has taken all of the last piece (gateway/edge/protocol.py).
_DRAIN: Message = {"type": "http.response.body", "body": b"", "more_body": True}


class Pace:
    """How much to read next for one response, from how fast the client took the last piece.

    A download holds what the socket has not taken yet, so a fixed large
    read costs every slow client its size; a fixed small one costs a fast
    client its throughput (on a 128 MiB download, 256 KiB reads made 60% of
    what 512 KiB made). The read follows the client: it starts small, falls
    back to what the client takes as soon as a piece waits, and doubles
    only after more than the kernel's own buffer has gone out without one
    waiting, since a socket whose buffer has room takes anything at once,
    whoever the client is (it has room at the start, and again each time it
    wakes a waiting writer).
    """

    __slots__ = ("fast", "largest", "size")

    def __init__(self, largest: int) -> None:
        self.largest = max(largest, MIN_READ)
        self.size = MIN_READ
        self.fast = 0  # bytes taken faster than needed since the last piece that waited

    def __call__(self) -> int:
        return self.size

    def took(self, sent: int, seconds: float) -> None:
        """The client took `sent` bytes in `seconds` (from the piece's write until the socket had it)."""
        wanted = sent / seconds * PACE_SECONDS if seconds > 0 else self.largest
        if wanted >= 2 * self.size:
            self.fast += sent
            if self.fast >= TRUSTED_AFTER:
                self.size = min(2 * self.size, self.largest)
        elif wanted < self.size:
            self.fast = 0
            while self.size > MIN_READ and self.size > wanted:
                self.size //= 2


class IncompleteBody(Exception):
    """The source ended before the body's length was sent."""

    def __init__(self, sent: int, length: int) -> None:
        super().__init__(f"the source gave {sent} of {length} bytes")


def streams(plan: Plan, source: ByteSource, chunk_size: int) -> bool:
    """Whether the answer is a stream (a body longer than one chunk read from its source)."""
    return plan.body and plan.reply is None and (bool(plan.parts) or source.whole is None) and plan.length > chunk_size


async def send_plan(plan: Plan, source: ByteSource, chunk_size: int, receive: Receive, send: Send) -> None:
    """Send `plan` with the bytes of `source`."""
    if plan.reply is not None:
        await send_reply(send, plan.reply)
    elif not plan.body:
        await send(plan.start)
        await send({"type": "http.response.body", "body": b""})
    elif plan.parts:
        pace = Pace(chunk_size)
        await stream_body(plan.start, _parts(source, plan.parts, plan.closing, pace), plan.length, pace, receive, send)
    elif source.whole is not None:
        # Already in memory: one send, none of the streaming machinery. A range goes out as
        # a memoryview: uvicorn writes any bytes-like body, and the copy a slice would make
        # was a measurable share of a ranged request.
        start, stop = plan.spans[0]
        body = source.whole if (start, stop) == (0, source.size) else memoryview(source.whole)[start:stop]
        await send(plan.start)
        await send({"type": "http.response.body", "body": body})
    else:
        pace = Pace(chunk_size)
        await stream_body(plan.start, _spans(source, plan.spans, pace), plan.length, pace, receive, send)


async def stream_body(
    start: Message, pieces: AsyncIterator[bytes], length: int, pace: Pace, receive: Receive, send: Send
) -> None:
    """Send `start` and the body with backpressure; stop reading when the client leaves.

    The last chunk is known by the count (`Content-Length`), so nothing is
    held back: uvicorn's `send` waits while the socket is full (flow
    control), and each piece is followed by an empty one that returns once
    the socket has taken it, so a download holds one read at a time, sized
    by `pace` to the client.
    """
    gone = asyncio.ensure_future(_disconnected(receive)) if length > MIN_READ else None
    sent = 0
    try:
        async with contextlib.aclosing(pieces):
            async for data in pieces:
                if start:
                    await send(start)
                    start = {}
                sent += len(data)
                began = perf_counter()
                await send({"type": "http.response.body", "body": data, "more_body": sent < length})
                if sent < length:
                    await send(_DRAIN)  # the next read is made once the socket has this one, never held beside it
                pace.took(len(data), perf_counter() - began)
                if gone is not None and gone.done():
                    log.info("client went away mid-body; stopped reading")
                    return
        if sent < length:
            raise IncompleteBody(sent, length)
    finally:
        if gone is not None:
            gone.cancel()
    if start:  # an empty body: nothing came to carry the headers
        await send(start)
        await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _spans(source: ByteSource, spans: tuple[Span, ...], pace: Pace) -> AsyncIterator[bytes]:
    for start, stop in spans:
        async with contextlib.aclosing(source.iter_bytes(start, stop, pace)) as chunks:  # type: ignore[type-var]
            async for data in chunks:
                yield data


async def _parts(
    source: ByteSource, parts: tuple[tuple[bytes, Span], ...], closing: bytes, pace: Pace
) -> AsyncIterator[bytes]:
    for head, (start, stop) in parts:
        yield head
        async with contextlib.aclosing(source.iter_bytes(start, stop, pace)) as chunks:  # type: ignore[type-var]
            async for data in chunks:
                yield data
    yield closing
