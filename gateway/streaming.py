"""Sending a response body from storage: backpressure, disconnects, failures.

Knows ASGI messages and byte spans, not tokens or storage backends: the
pieces to send arrive as an async iterator of bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from .asgi import Message, Receive, Send
from .metrics import ACTIVE_STREAMS
from .ranges import Span
from .replies import send_reply, storage_failure
from .storage import StorageUnavailable, StoredFile

log = logging.getLogger("gateway.edge")


async def stream_body(
    start: Message, pieces: AsyncIterator[bytes], length: int, chunk_size: int, receive: Receive, send: Send
) -> None:
    """Send `start` and the body with backpressure; stop reading when the client leaves.

    Headers go out with the first chunk, so a storage that fails before any
    byte is read still gets a clean 5xx. The last chunk is known by the
    count (`Content-Length`), so nothing is held back: uvicorn's `send`
    waits while the socket is full (flow control), and a download holds
    about two chunks, the one being sent and the one being read ahead.
    After the headers, a failure aborts the connection: the client sees a
    short transfer against Content-Length and can resume, rather than a 200
    whose body is silently cut.
    """
    streaming = length > chunk_size
    gone = asyncio.ensure_future(_disconnected(receive)) if streaming else None
    sent = 0
    if streaming:
        ACTIVE_STREAMS.inc()
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
            raise StorageUnavailable("truncated", f"storage gave {sent} of {length} bytes")
    except StorageUnavailable as exc:
        if start:
            await send_reply(send, storage_failure(exc))
        raise  # with the headers already out, uvicorn then closes the connection
    finally:
        if gone is not None:
            gone.cancel()
            ACTIVE_STREAMS.dec()
    if start:  # an empty body: nothing came to carry the headers
        await send(start)
        await send({"type": "http.response.body", "body": b""})


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def file_pieces(file: StoredFile, spans: tuple[Span, ...]) -> AsyncIterator[bytes]:
    for start, stop in spans:
        async with contextlib.aclosing(file.iter_bytes(start, stop)) as chunks:
            async for data in chunks:
                yield data


async def multipart_pieces(file: StoredFile, parts: list[tuple[bytes, Span]], closing: bytes) -> AsyncIterator[bytes]:
    for head, (start, stop) in parts:
        yield head
        async with contextlib.aclosing(file.iter_bytes(start, stop)) as chunks:
            async for data in chunks:
                yield data
    yield closing
