"""What the edge calls to serve a rendition in place of the original file.

`Renditions.plan()` takes the source file already found (any storage: disk
or S3, through the `StoredFile` interface only) and what the link wants,
and decides; `Renditions.open()` then serves what was decided:

1. Probe the source: its head is read through `iter_bytes` and probed with
   PyAV in the probe process; the answer is remembered per source version
   (path and ETag).
2. Decide. An inline link gets the PCM WAV rendition only when the file
   holds audio browsers cannot play (and no picture, which a rendition
   would drop); otherwise the original is served. `?format=` and `?peaks=`
   always convert, and a file that holds no decodable audio is `415`.
   The link admission (and so the link inspector) stops here.
3. Serve the rendition from the cache, or convert it once: one task per
   rendition in this process, awaited by every request that wants it, and
   a lock per rendition across processes, so twenty players opening the
   same new recording on four workers cost one conversion. A conversion
   needs one of the host's `max_conversions` slots; when none is free the
   answer is `503` with `Retry-After`, and nothing queues. A request that
   waits for a conversion already running needs no slot. The PCM WAV is
   sent while it is being written (`growing`); other renditions once made.

The rendition's ETag is the source's with the variant appended
(`"5f3c-9b2e"` -> `"5f3c-9b2e-wav"`) and its Last-Modified is the source's,
so validators stay stable across evictions and workers and change when the
source does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..common.caching import LruCache
from ..common.metrics import (
    ACTIVE_CONVERSIONS,
    CONVERSION_DURATION,
    CONVERSION_FAILURES,
    CONVERSION_WAIT,
    CONVERSIONS,
    CONVERSIONS_QUEUED,
    CONVERSIONS_REFUSED,
    RENDITION_CACHE,
    child,
)
from ..storage import StorageUnavailable, StoredFile
from .cache import OpenRenditions, RenditionCache, RenditionFile, create
from .growing import follow
from .pool import ProcessDied, ProcessPool
from .probe import PROBE_BYTES, Probe, quick_probe
from .spec import INLINE_FORMAT, Refused, TooLarge, TooLong, Undecodable, Wanted

log = logging.getLogger("gateway.transcode")

RETRY_AFTER = 5  # seconds, with 503 when conversions are at their limit
KEY_WAIT_SECONDS = 600.0  # longest wait for another process converting the same rendition
KEY_POLL_SECONDS = 0.05
SLOT_POLL_SECONDS = 0.02  # slots are byte-range locks of every process of the host: looked at, not waited on
REMEMBERED = 4096  # probes and undecodable sources remembered per worker
STREAMED = INLINE_FORMAT  # the rendition whose size is known before it is made (PCM WAV): sent as it grows
# Run in the pool processes, by name: the edge's process never imports PyAV.
PROBE = "gateway.transcode.probe:probe"
RENDER = "gateway.transcode.convert:render"
_ORIGINAL_STILL_THERE = "the original is still available without format or peaks"


def derived_etag(source_etag: str, variant: str) -> str:
    opaque = source_etag.removeprefix("W/").strip('"')
    return f'"{opaque}-{variant}"'


@dataclass(frozen=True, slots=True)
class Rendition:
    """A rendition decided on: its cache key, its ETag, and what it is."""

    key: str
    etag: str
    wants: Wanted


class Renditions:
    """Probing and deciding (every process that admits links), converting and serving (the edge)."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        cache_bytes: int,
        max_conversions: int,
        max_cpu_seconds: float,
        max_rendition_bytes: int,
        queue_seconds: float,
        max_queued: int,
        inline: bool,
        chunk_size: int,
        converting: bool = True,
    ) -> None:
        self.inline = inline  # inline links to audio browsers cannot play get the PCM WAV rendition
        self.max_cpu_seconds = max_cpu_seconds
        self.max_rendition_bytes = max_rendition_bytes
        self.queue_seconds = queue_seconds
        self.max_queued = max_queued
        self._queued = 0
        self.converting = converting
        self.chunk = chunk_size
        self.cache = RenditionCache(cache_dir, cache_bytes, max_conversions, chunk_size)
        self.converter = ProcessPool("conversion", max_conversions, idle=True)
        self.prober = ProcessPool("probe", 1, idle=False)
        self.open_files = OpenRenditions(chunk_size)
        self._probes: LruCache[str, Probe] = LruCache(REMEMBERED)
        self._unconvertible: LruCache[str, tuple[str, str]] = LruCache(REMEMBERED)  # key -> (reason, problem)
        self._running: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Ready the cache (the edge); the pools start their processes with their first calls."""
        if self.converting:
            await asyncio.to_thread(self.cache.prepare)

    async def aclose(self) -> None:
        self.converter.close()
        self.prober.close()
        self.open_files.close()
        self.cache.close()

    async def plan(self, file: StoredFile, source: str, path: str, wants: Wanted) -> Rendition | None:
        """The rendition of `file` (`path` in the storage named `source`) to serve, or None for the original.

        Raises Refused (415: no decodable audio) and StorageUnavailable (the
        source's head could not be read).
        """
        found = await self.describe(file, source, path)
        if not wants.explicit:
            if not found.audio or found.playable or found.video:
                return None
        elif found.problem is not None and found.complete:
            raise _unconvertible(wants, "undecodable", found.problem)
        _check_channel(found, wants.channel)
        key = hashlib.sha256(f"{source}\0{path}\0{file.etag}\0{wants.variant}".encode()).hexdigest()[:40]
        known = self._unconvertible.get(key)
        if known is not None:
            raise _unconvertible(wants, *known)
        return Rendition(key, derived_etag(file.etag, wants.variant), wants)

    async def describe(self, file: StoredFile, source: str, path: str) -> Probe:
        """What `file` holds (container, codec, channels, duration), probed once per version.

        Raises StorageUnavailable when its head could not be read.
        """
        return await self._probe(file, f"{source}\0{path}\0{file.etag}")

    async def recording(self, file: StoredFile, source: str, path: str, channel: int | None = None) -> Probe:
        """`describe()`, for a page about the recording: Refused 415 when it is none, 400 when it lacks `channel`."""
        found = await self.describe(file, source, path)
        if found.problem is not None and found.complete:
            raise Refused(415, "undecodable", f"{found.problem}; the file itself is still available without player")
        _check_channel(found, channel)
        return found

    async def open(self, file: StoredFile, rendition: Rendition) -> RenditionFile:
        """The rendition, from the cache or made now (Refused 503 when conversions are at their limit)."""
        return await self._rendition(rendition.key, rendition.etag, file, rendition.wants)

    # -- probing ---------------------------------------------------------------

    async def _probe(self, file: StoredFile, version: str) -> Probe:
        found = self._probes.get(version)
        if found is not None:
            return found
        if file.whole is not None:
            head = file.whole[:PROBE_BYTES]
        else:
            parts = []
            async with contextlib.aclosing(file.iter_bytes(0, min(file.size, PROBE_BYTES))) as chunks:
                async for data in chunks:
                    parts.append(data)
            head = b"".join(parts)
        complete = len(head) >= file.size
        try:
            # The containers PBXs write say what they hold in a few bytes: read here. FFmpeg's
            # demuxers (in a process of their own) only for the rest.
            found = quick_probe(head, file.size) or await self.prober.run(PROBE, head, complete, file.size)
        except Exception as exc:  # noqa: BLE001 - the process died, or the file broke probing: remembered
            log.error("probing the file with etag %s failed: %r", file.etag, exc)
            found = Probe(None, None, False, "not a recording the gateway can read (probing it failed)", True)
        self._probes.put(version, found)
        return found

    # -- the cache, single flight ----------------------------------------------

    async def _rendition(self, key: str, etag: str, file: StoredFile, wants: Wanted) -> RenditionFile:
        loop = asyncio.get_running_loop()
        waited = False
        found = self.open_files.get(key, etag, file.mtime, loop.time())
        if found is not None:
            child(RENDITION_CACHE, wants.kind, "hit").inc()
            return found
        for _ in range(3):  # a rendition evicted between its conversion and its opening is made again
            opened = await loop.run_in_executor(None, self.cache.open, key)
            if opened is not None:
                self.open_files.put(key, opened, loop.time())
                found = self.open_files.get(key, etag, file.mtime, loop.time())
                assert found is not None
                child(RENDITION_CACHE, wants.kind, "miss" if waited else "hit").inc()
                return found
            task = self._running.get(key)
            if task is None:
                task = asyncio.ensure_future(self._convert(key, file, wants))
                self._running[key] = task
                task.add_done_callback(functools.partial(self._finished, key))
            waited = True
            if wants.kind == STREAMED:
                # Sent as it is written, by whichever process of the host converts it.
                growing = await follow(self.cache.output_path(key), etag, file.mtime, self.chunk, task.done)
                if growing is not None:
                    child(RENDITION_CACHE, wants.kind, "miss").inc()
                    return growing
            # Shielded: a request that goes away does not cancel the conversion others wait for.
            await asyncio.shield(task)
        raise Refused(503, "evicted", "the rendition cache is too small; retry shortly", RETRY_AFTER)

    def _finished(self, key: str, task: asyncio.Future[None]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody waits for is not reported as lost

    async def _convert(self, key: str, file: StoredFile, wants: Wanted) -> None:
        """Make rendition `key` unless another process does: then wait for it (no slot needed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KEY_WAIT_SECONDS
        while not self.cache.try_key(key):
            if loop.time() > deadline:
                raise Refused(503, "busy", "the conversion takes too long; retry later", RETRY_AFTER)
            await asyncio.sleep(KEY_POLL_SECONDS)
        try:
            if await loop.run_in_executor(None, self.cache.exists, key):
                return  # another worker made it while this one waited for the lock
            slot = await self._slot(wants)
            active = child(ACTIVE_CONVERSIONS, wants.kind)
            active.inc()
            started = time.perf_counter()
            try:
                await self._copy(file, self.cache.source_path(key))
                rendered = await self.converter.run(
                    RENDER,
                    self.cache.source_path(key),
                    self.cache.output_path(key),
                    wants.kind,
                    wants.pixels,
                    self.max_cpu_seconds,
                    self.max_rendition_bytes,
                    wants.channel,
                    wants.mask,
                    wants.split,
                )
                await loop.run_in_executor(None, self.cache.store, key)
                elapsed = time.perf_counter() - started
                # Counted before the gauge drops: a scrape that sees no conversion running sees this one done.
                child(CONVERSIONS, rendered.codec, wants.kind).inc()
                child(CONVERSION_DURATION, wants.kind).observe(elapsed)
            except Undecodable as exc:  # remembered: converting it again would fail the same way
                self._unconvertible.put(key, ("undecodable", str(exc)))
                raise _unconvertible(wants, "undecodable", str(exc)) from None
            except (TooLong, TooLarge) as exc:  # remembered too: it would only run out of time or room again
                known = (
                    "too_long" if isinstance(exc, TooLong) else "too_large",
                    f"the recording cannot be converted: {exc}",
                )
                self._unconvertible.put(key, known)
                raise _unconvertible(wants, *known) from None
            except ProcessDied:  # not remembered: the OOM killer may have been the cause
                raise _unconvertible(wants, "crashed", "the recording could not be converted") from None
            except OSError as exc:  # the cache directory full or unwritable: this host's problem, for now
                log.error("rendition=%s could not be made: %s", key[:8], exc)
                raise Refused(503, "cache", "the rendition cannot be made now; retry later", RETRY_AFTER) from None
            except StorageUnavailable:  # the source could not be read: the storage's failure, answered as such
                raise
            except Exception:  # whatever else a file makes the converter raise (logged): 415
                log.exception("rendition=%s: the converter failed on the recording", key[:8])
                known = ("undecodable", "not a recording the gateway can convert")
                self._unconvertible.put(key, known)
                raise _unconvertible(wants, *known) from None
            finally:
                self.cache.release_slot(slot)
                active.dec()
                await loop.run_in_executor(None, self.cache.remove_partial, key)
            log.info(
                "converted rendition=%s codec=%s format=%s variant=%s audio=%.1fs in %.3fs",
                key[:8], rendered.codec, wants.kind, wants.variant, rendered.seconds, elapsed,
            )  # fmt: skip
        finally:
            self.cache.release_key(key)

    async def _slot(self, wants: Wanted) -> int:
        """One of the host's conversion slots, waited for in a bounded queue until a deadline.

        A page of twenty new calls (each `<audio preload=metadata>` asks at
        once) must load them all: a browser never retries a media element
        that got `503`. Conversions take well under a second each, so the
        request waits its turn; only past `queue_seconds`, or with
        `max_queued` already waiting in this worker, is it `503`.
        """
        slot = self.cache.try_slot()
        if slot is not None:
            return slot
        if self._queued >= self.max_queued:
            child(CONVERSIONS_REFUSED, wants.kind).inc()
            raise Refused(503, "busy", "too many conversions are waiting; retry shortly", RETRY_AFTER)
        loop = asyncio.get_running_loop()
        began = loop.time()
        self._queued += 1
        CONVERSIONS_QUEUED.inc()
        try:
            while (slot := self.cache.try_slot()) is None:
                if loop.time() - began > self.queue_seconds:
                    child(CONVERSIONS_REFUSED, wants.kind).inc()
                    raise Refused(503, "busy", "too many conversions are running; retry shortly", RETRY_AFTER)
                await asyncio.sleep(SLOT_POLL_SECONDS)
        finally:
            self._queued -= 1
            CONVERSIONS_QUEUED.dec()
            child(CONVERSION_WAIT, wants.kind).observe(loop.time() - began)
        return slot

    async def _copy(self, file: StoredFile, target: str) -> None:
        """The source's bytes into a private file the converter reads (from any storage)."""
        loop = asyncio.get_running_loop()
        fd = await loop.run_in_executor(None, create, target)
        try:
            async with contextlib.aclosing(file.iter_bytes(0, file.size)) as chunks:
                async for data in chunks:
                    await loop.run_in_executor(None, _write_all, fd, data)
        finally:
            await loop.run_in_executor(None, os.close, fd)


def _check_channel(found: Probe, channel: int | None) -> None:
    """Refused 400 when the recording is known to lack `channel` (1-based)."""
    problem = found.lacking(channel)
    if problem is not None:
        raise Refused(400, "channel", f"channel {channel}: {problem}")


def _unconvertible(wants: Wanted, reason: str, problem: str) -> Refused:
    """415: `reason` is the metric's and the access log's label, `problem` what the client reads."""
    child(CONVERSION_FAILURES, wants.kind, reason).inc()
    # Never for a masked link: through it, nothing else is available.
    return Refused(415, reason, problem if wants.mask else f"{problem}; {_ORIGINAL_STILL_THERE}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
