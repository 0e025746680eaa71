"""The storage interface the edge serves from, whatever holds the bytes.

A backend knows relative paths and bytes, nothing of tokens or HTTP. The
edge asks `open()` for a path and streams `iter_bytes()` of the spans it
decided to send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol


class NotFound(Exception):
    """The path does not name a servable file here; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class StorageUnavailable(Exception):
    """The storage failed (not the file missing): `kind` is the metric label."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind


class StoredFile(Protocol):
    size: int
    mtime: int  # whole seconds, as HTTP dates carry
    etag: str  # a strong validator, quoted as HTTP sends it
    whole: bytes | None  # the content, when it is already in memory (a small file)

    def iter_bytes(self, start: int, stop: int, pace: Callable[[], int] | None = None) -> AsyncIterator[bytes]:
        """Bytes [start, stop) in bounded chunks; raises StorageUnavailable if cut short.

        `pace()`, when given, says how many bytes to read next (the sender
        keeps reads small for a slow client, large for a fast one); without
        it, the storage's chunk size.
        """
        ...

    async def close(self) -> None: ...


class Storage(Protocol):
    label: str  # the `backend` metric label
    name: str  # what identifies it among storages sharing a rendition cache (a root, a bucket at an endpoint)
    local: bool  # on this replica (a directory) rather than shared by all (a bucket)
    # None: the gateway streams. "redirect": answer 302 to handoff_url().
    # "accel": answer X-Accel-Redirect to handoff_url() and let nginx send the bytes.
    handoff: str | None

    async def start(self) -> None:
        """Acquire long-lived resources (clients, pools) once per worker."""
        ...

    async def open(self, path: str) -> StoredFile:
        """Open a confined relative path; raises NotFound or StorageUnavailable."""
        ...

    async def handoff_url(self, file: StoredFile, path: str, content_type: str, disposition: str) -> str:
        """Where the bytes of `file` (opened for `path`) can be fetched without the gateway (see `handoff`)."""
        ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...
