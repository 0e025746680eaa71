"""Recordings on a local directory.

A request costs at most one trip to the thread pool: resolving, opening,
checking and (for files up to one chunk) reading and closing happen in a
single function run off the event loop. Small files just read are kept for
a short, configurable time (like nginx's `open_file_cache`), so a hot
recording costs no system call at all. Larger files are read a chunk at a
time as the socket takes them, so memory stays at about two chunks per
download whatever the file size.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

from aiofiles.os import wrap

from ..common.caching import LruCache
from . import NotFound, StorageUnavailable, StoredFile
from .beneath import Beneath, Escaped

# Symlinks below the root are followed (Beneath keeps the open below it); non-blocking so
# that a FIFO cannot hang a worker.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG)
# Sockets and device nodes without a driver cannot be opened: not files we serve.
_NOT_FILES = (errno.ENXIO, errno.ENODEV)
_close = wrap(os.close)


def entity_tag(size: int, mtime: int) -> str:
    """nginx's strong ETag format, so offloading to nginx keeps validators."""
    return f'"{mtime:x}-{size:x}"'


class DiskFile:
    """An open regular file, or the whole of a small one already in memory."""

    __slots__ = ("_chunk", "_fd", "etag", "mtime", "real", "size", "whole")

    def __init__(
        self, size: int, mtime: int, fd: int | None, data: bytes | None, chunk: int, real: str | None = None
    ) -> None:
        self.size = size
        self.mtime = mtime
        self.etag = entity_tag(size, mtime)
        self._fd = fd
        self.whole = data
        self._chunk = chunk
        self.real = real  # where the opened file really is, relative to the root (for nginx offload)

    async def iter_bytes(self, start: int, stop: int, pace: Callable[[], int] | None = None) -> AsyncIterator[bytes]:
        if self.whole is not None:
            yield self.whole if (start, stop) == (0, self.size) else self.whole[start:stop]
            return
        assert self._fd is not None
        fd, chunk = self._fd, self._chunk
        loop = asyncio.get_running_loop()
        while start < stop:
            # Read only when the previous chunk has been taken by the socket: reading
            # ahead would hold a third chunk per slow download (measured: 3.1 vs 2.1).
            size = min(pace() if pace is not None else chunk, stop - start)
            reading = loop.run_in_executor(None, os.pread, fd, size, start)
            try:
                data = await reading
            except asyncio.CancelledError:
                await asyncio.wait([reading])  # the thread still uses the fd: let it finish before close
                raise
            if data:
                start += len(data)
                yield data
            else:
                await self._nothing_at(start)

    async def _nothing_at(self, start: int) -> None:
        """A read at `start` found the end of the file: here it was cut short; a growing file waits."""
        raise StorageUnavailable("truncated", f"file shrank to {start} of {self.size} bytes")

    async def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await _close(fd)


class DiskStorage:
    """A root directory; paths given to `open` are already lexically confined."""

    label = "disk"
    local = True

    def __init__(
        self,
        root: Path,
        chunk: int,
        cache_seconds: float = 0.0,
        cache_bytes: int = 0,
        accel_redirect: str | None = None,
    ) -> None:
        self.name = Path(root).as_uri()
        self.handoff = "accel" if accel_redirect else None
        self._accel_prefix = accel_redirect
        self._beneath = Beneath(str(root))
        self.root = self._beneath.root
        self._chunk = chunk
        self._open = wrap(self._open_sync)
        # Like nginx's open_file_cache: small files just read, kept whole for a moment.
        self._cache: LruCache[str, DiskFile] = LruCache(
            cache_bytes, seconds=cache_seconds, weight=lambda file: file.size
        )

    async def open(self, path: str) -> DiskFile:
        now = asyncio.get_running_loop().time()
        file = self._cache.get(path, now)
        if file is None:
            file = await self._open(path)
            if file._fd is None:
                self._cache.put(path, file, now)
        return file

    def _open_sync(self, path: str) -> DiskFile:
        """Runs in the thread pool: open below the root, check, maybe read."""
        try:
            fd = self._beneath.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise _not_found_or_failure(exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise NotFound("not_file", "not a regular file")
            # nginx is handed the file the gateway opened, not a path it would resolve again.
            real = self._beneath.real_relative(fd) if self._accel_prefix else None
            size, mtime = info.st_size, int(info.st_mtime)
            if size > self._chunk:
                return DiskFile(size, mtime, fd, None, self._chunk, real)
            data = _read_exactly(fd, size)
        except Escaped:
            os.close(fd)
            raise NotFound("symlink", "the file opened lies outside the storage root") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return DiskFile(len(data), mtime, None, data, self._chunk, real)

    async def start(self) -> None:
        return None

    async def handoff_url(self, file: StoredFile, path: str, content_type: str, disposition: str) -> str:
        """The nginx internal location of the file open() opened (its real path: no symlink to follow)."""
        assert self._accel_prefix is not None and isinstance(file, DiskFile) and file.real is not None
        return self._accel_prefix + quote(file.real)

    async def ready(self) -> bool:
        return await _readable_dir(self.root)

    async def aclose(self) -> None:
        self._cache.clear()


def _read_exactly(fd: int, size: int) -> bytes:
    """Read a small file whole; a file cut short meanwhile is served as it is now."""
    parts = []
    while size > 0:
        part = os.read(fd, size)
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _not_found_or_failure(exc: OSError) -> Exception:
    if exc.errno in _MISSING:
        return NotFound("not_found")
    if exc.errno in _NOT_FILES:
        return NotFound("not_file", "not a regular file")
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return NotFound("symlink", "a symlink leads outside the storage root, or round in circles")
    if exc.errno == errno.EACCES:
        return NotFound("permission", "the gateway may not read this file")
    return StorageUnavailable("io", f"{exc.strerror} (errno {exc.errno})")


def _is_readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


_readable_dir = wrap(_is_readable_dir)
