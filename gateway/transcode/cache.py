"""The rendition cache: converted files on local disk, bounded, least recently used evicted.

Layout of the cache directory (shared by every worker of the host):

    renditions/<key>   finished renditions; a file's mtime is when it was last used
    partial/<key>.in   the copy of the source a conversion reads
    partial/<key>.out  what the conversion writes, renamed into renditions/ once complete
                       (a PCM WAV is read from here while it is written: see `growing`)
    partial/<key>.out.part  an output whose size is known only once complete, renamed to .out then
    locks              an empty file carrying byte-range locks

A rendition appears whole or not at all (rename is atomic), so readers never
see a half-written file; one being sent while it is evicted stays readable
through its open descriptor. The size bound is checked after each new
rendition: the least recently used are removed until the rest fit, never the
one just made (so the cache may exceed its bound by one rendition, and a
rendition larger than the whole bound is still served).

Locks are POSIX byte-range locks (`fcntl.lockf`) on `locks`; the kernel
drops them when a process dies, so a crash never leaves one behind.
Byte `i` below `slots` is a conversion slot: at most `slots` conversions
run at once on the host, whatever the number of workers. Byte
`KEY_LOCKS + hash(key)` is held by the one process converting that
rendition. POSIX locks belong to a process (taking a byte it already holds
succeeds), so within a process the caller keeps one task per key and this
class remembers the slots it holds.

`OpenRenditions` keeps the descriptors of renditions just served open for a
few seconds, like nginx's `open_file_cache`: a player seeking through a
rendition sends a request per seek, and each then costs a `dup()` instead of
a trip to the thread pool to open the file and another to close it. A
rendition's content never changes under its key (the key holds the source's
ETag), so a descriptor kept open is never stale; one evicted meanwhile is
still read whole through it, and its space is freed when it expires.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..common.caching import LruCache
from ..common.files import private_directory
from ..storage.disk import DiskFile

log = logging.getLogger("gateway.transcode")

LOCK_FILE = "locks"
KEY_LOCKS = 1 << 40  # key locks start here, far above any slot
# An output whose size is known only when complete is written under this suffix, then renamed.
PARTIAL_SUFFIX = ".part"
TOUCH_SECONDS = 60.0  # a used rendition's mtime is refreshed at most this often
_BUSY = (errno.EAGAIN, errno.EACCES)
# Every file of the cache is opened without following a symlink (and created new, never
# truncated: see `create`): the directory is private, and this holds even if it were not.
_PRIVATE = os.O_NOFOLLOW | os.O_CLOEXEC


def create(path: str) -> int:
    """A new file at `path` for writing: whatever was there (a leftover, a planted symlink) is removed first."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _PRIVATE, 0o600)


def open_new(path: str) -> BinaryIO:
    """`create`, as a file object."""
    return os.fdopen(create(path), "wb")


class RenditionFile(DiskFile):
    """A finished rendition, served like a file on disk, under an ETag derived from its source.

    Its descriptor is a `dup()` of one `OpenRenditions` keeps: closing it
    releases no file, so it is closed at once rather than in the thread pool.
    """

    __slots__ = ()

    def __init__(self, size: int, mtime: int, etag: str, fd: int | None, data: bytes | None, chunk: int) -> None:
        super().__init__(size, mtime, fd, data, chunk)
        self.etag = etag

    async def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Opened:
    """A finished rendition opened: a descriptor, or the whole content when it is small."""

    size: int
    fd: int | None
    data: bytes | None


class OpenRenditions:
    """Renditions recently opened, kept open for `seconds` (at most `entries` of them)."""

    def __init__(self, chunk: int, seconds: float = 10.0, entries: int = 64) -> None:
        self.chunk = chunk
        self._open: LruCache[str, Opened] = LruCache(entries, seconds=seconds, on_evict=_close)

    def get(self, key: str, etag: str, mtime: int, now: float) -> RenditionFile | None:
        """A file of its own for one response (a duplicated descriptor), or None."""
        self._open.expire(now)
        opened = self._open.get(key, now)
        if opened is None:
            return None
        fd = None if opened.fd is None else os.dup(opened.fd)
        return RenditionFile(opened.size, mtime, etag, fd, opened.data, self.chunk)

    def put(self, key: str, opened: Opened, now: float) -> None:
        """Keep `opened` (its descriptor is now ours to close)."""
        self._open.put(key, opened, now)

    def close(self) -> None:
        self._open.clear()


def _close(opened: Opened) -> None:
    if opened.fd is not None:
        os.close(opened.fd)


def key_lock_offset(key: str) -> int:
    return KEY_LOCKS + int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "big")


class RenditionCache:
    def __init__(self, directory: Path, capacity: int, slots: int, chunk: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self.slots = slots
        self.chunk = chunk
        self.finished = directory / "renditions"
        self.partial = directory / "partial"
        self._lock_fd: int | None = None
        self._held_slots: set[int] = set()

    # -- set-up (blocking: run in a thread) ----------------------------------

    def prepare(self) -> None:
        """Make the directories (private), open the lock file, drop leftovers of dead conversions, fit the bound."""
        for directory in (self.directory, self.finished, self.partial):
            private_directory(directory)
        if self._lock_fd is None:
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | _PRIVATE, 0o600)
        for entry in os.scandir(self.partial):
            key = entry.name.partition(".")[0]
            if self.try_key(key):  # nobody is converting it: a leftover
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                finally:
                    self.release_key(key)
        self.evict()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops every lock this process holds on the file
            self._lock_fd = None
            self._held_slots.clear()

    # -- renditions (blocking: run in a thread) ------------------------------

    def source_path(self, key: str) -> str:
        return str(self.partial / f"{key}.in")

    def output_path(self, key: str) -> str:
        return str(self.partial / f"{key}.out")

    def exists(self, key: str) -> bool:
        return (self.finished / key).is_file()

    def open(self, key: str) -> Opened | None:
        """The finished rendition `key`, open (read whole when small), or None when there is none."""
        path = self.finished / key
        try:
            fd = os.open(path, os.O_RDONLY | _PRIVATE)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, f"{path} is not a regular file")
            if info.st_mtime < time.time() - TOUCH_SECONDS:
                with contextlib.suppress(OSError):
                    os.utime(fd)  # used now: last in line for eviction
            if info.st_size > self.chunk:
                return Opened(info.st_size, fd, None)
            data = os.pread(fd, info.st_size, 0)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return Opened(len(data), None, data)

    def store(self, key: str) -> None:
        """Publish the finished output of `key`, then evict down to the bound (never `key` itself)."""
        os.replace(self.output_path(key), self.finished / key)
        self.evict(keep=key)

    def remove_partial(self, key: str) -> None:
        for path in (self.source_path(key), self.output_path(key), self.output_path(key) + PARTIAL_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def evict(self, keep: str | None = None) -> int:
        """Remove the least recently used renditions until the rest fit; how many were removed."""
        entries = []
        total = 0
        for entry in os.scandir(self.finished):
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # evicted by another worker meanwhile
            entries.append((info.st_mtime, entry.name, info.st_size))
            total += info.st_size
        removed = 0
        if total <= self.capacity:
            return removed
        entries.sort()
        for _, name, size in entries:
            if total <= self.capacity:
                break
            if name == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.finished / name)
                removed += 1
            total -= size
        log.info("rendition cache: evicted %d renditions to fit %d bytes", removed, self.capacity)
        return removed

    # -- locks (non-blocking system calls: fine on the event loop) -----------

    def _try(self, offset: int) -> bool:
        assert self._lock_fd is not None, "prepare() first"
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as exc:
            if exc.errno in _BUSY:
                return False
            raise
        return True

    def _release(self, offset: int) -> None:
        if self._lock_fd is not None:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 1, offset)

    def try_slot(self) -> int | None:
        """A free conversion slot of the host, now held by this process; None when all are taken."""
        for slot in range(self.slots):
            if slot not in self._held_slots and self._try(slot):
                self._held_slots.add(slot)
                return slot
        return None

    def release_slot(self, slot: int) -> None:
        self._held_slots.discard(slot)
        self._release(slot)

    def try_key(self, key: str) -> bool:
        """Whether this process may now convert `key` (no other process is)."""
        return self._try(key_lock_offset(key))

    def release_key(self, key: str) -> None:
        self._release(key_lock_offset(key))
