"""A PCM WAV rendition sent while it is being made.

The converter writes the WAV header, which declares the rendition's size,
before any sample, then the samples in order, into a file of its own (see
`convert`). The edge opens that file as soon as the header is there and
answers as it would from the cache: the same size, ranges, validators and
bytes a later request gets from the finished rendition. A read past what is
written so far waits for the converter (ten minutes of GSM are decoded in
about a quarter of a second); a conversion that ends without writing the
whole file leaves the response to be cut, as a storage failure would.

This is what makes the first byte of a new rendition independent of the
recording's length: the player starts while the rest is decoded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from ..storage import StorageUnavailable
from .cache import RenditionFile

# RIFF, fmt and data headers, as Python's `wave` writes them for PCM.
HEADER_BYTES = 44
POLL_SECONDS = 0.01
MAX_POLL_SECONDS = 0.1


def declared_size(head: bytes) -> int | None:
    """The file size a WAV header declares (its RIFF size plus the 8 bytes before it); None if incomplete."""
    if len(head) < HEADER_BYTES or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    return int.from_bytes(head[4:8], "little") + 8


class GrowingRendition(RenditionFile):
    """A rendition read while the converter still writes it; `finished()` tells when it has stopped."""

    __slots__ = ("_finished", "_last_look")

    def __init__(self, size: int, mtime: int, etag: str, fd: int, chunk: int, finished: Callable[[], bool]) -> None:
        super().__init__(size, mtime, etag, fd, None, chunk)
        self._finished = finished
        self._last_look = False

    async def _nothing_at(self, start: int) -> None:
        if not self._finished():
            await asyncio.sleep(POLL_SECONDS)
        elif not self._last_look:
            self._last_look = True  # it may have written the rest just before finishing: read once more
        else:
            raise StorageUnavailable("conversion", f"the conversion stopped at {start} of {self.size} bytes")


async def follow(path: str, etag: str, mtime: int, chunk: int, finished: Callable[[], bool]) -> GrowingRendition | None:
    """The rendition being written at `path`, once its header is there; None if `finished()` comes first."""
    loop = asyncio.get_running_loop()
    delay = POLL_SECONDS
    while not finished():
        opened = await loop.run_in_executor(None, _open_declared, path)
        if opened is not None:
            fd, size = opened
            return GrowingRendition(size, mtime, etag, fd, chunk, finished)
        await asyncio.sleep(delay)
        # A header comes within milliseconds or only at the end (a WAV whose size needs decoding
        # is renamed there complete): after the first looks, look less often.
        delay = min(2 * delay, MAX_POLL_SECONDS)
    return None


def _open_declared(path: str) -> tuple[int, int] | None:
    """Open `path` and read the size its header declares; None while it has no (whole) header."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        size = declared_size(os.pread(fd, HEADER_BYTES, 0))
    except BaseException:
        os.close(fd)
        raise
    if size is None:
        os.close(fd)
        return None
    return fd, size
