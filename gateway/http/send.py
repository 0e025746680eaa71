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
from collections.abc import AsyncIterator
from typing import Protocol

from .asgi import Message, Receive, Send
from .plan import Plan
from .ranges import Span
from .replies import send_reply

log = logging.getLogger("gateway.edge")


class ByteSource(Protocol):
    """Bytes of a representation: all of them in memory (`whole`), or read by span."""

    size: int
    whole: bytes | None

    def iter_bytes(self, start: int, stop: int) -> AsyncIterator[bytes]: ...


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
        await stream_body(plan.start, _parts(source, plan.parts, plan.closing), plan.length, chunk_size, receive, send)
    elif source.whole is not None:
        # Already in memory: one send, none of the streaming machinery. A range goes out as
        # a memoryview: uvicorn writes any bytes-like body, and the copy a slice would make
        # was a measurable share of a ranged request.
        start, stop = plan.spans[0]
        body = source.whole if (start, stop) == (0, source.size) else memoryview(source.whole)[start:stop]
        await send(plan.start)
        await send({"type": "http.response.body", "body": body})
    else:
        await stream_body(plan.start, _spans(source, plan.spans), plan.length, chunk_size, receive, send)


async def stream_body(
    start: Message, pieces: AsyncIterator[bytes], length: int, chunk_size: int, receive: Receive, send: Send
) -> None:
    """Send `start` and the body with backpressure; stop reading when the client leaves.

    The last chunk is known by the count (`Content-Length`), so nothing is
    held back: uvicorn's `send` waits while the socket is full (flow
    control), and a download holds about two chunks, the one being sent and
    the one being read ahead.
    """
    gone = asyncio.ensure_future(_disconnected(receive)) if length > chunk_size else None
    sent = 0
    try:
        async with contextlib.aclosing(pieces):
            async for data in pieces:
                if start:
                    await send(start)
                    start = {}
                sent += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": sent < length})
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


async def _spans(source: ByteSource, spans: tuple[Span, ...]) -> AsyncIterator[bytes]:
    for start, stop in spans:
        async with contextlib.aclosing(source.iter_bytes(start, stop)) as chunks:  # type: ignore[type-var]
            async for data in chunks:
                yield data


async def _parts(source: ByteSource, parts: tuple[tuple[bytes, Span], ...], closing: bytes) -> AsyncIterator[bytes]:
    for head, (start, stop) in parts:
        yield head
        async with contextlib.aclosing(source.iter_bytes(start, stop)) as chunks:  # type: ignore[type-var]
            async for data in chunks:
                yield data
    yield closing
