"""Recordings in S3 or an S3-compatible store (MinIO, Ceph, moto), on aioboto3.

Two clients per worker, opened at start-up and closed at shutdown: one for
lookups and one for bodies, so downloads stalled by slow clients (each holds
a pooled connection while backpressure pauses it) can never starve the
lookups of new requests or the readiness probe. A file is looked up with
HEAD (cheap, and it tells a missing key from a broken store), remembered for
a few seconds so a player seeking through a recording pays one round trip
per range, not two. Each span is one ranged GET streamed in bounded chunks,
pinned to the ETag seen at lookup so a replaced object cannot be spliced
into one response. Every call has a deadline, waiting for a pooled
connection included. Failures of the store are `StorageUnavailable`, never
`NotFound`: an outage must not look like a missing file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..common.caching import LruCache
from . import NotFound, StorageUnavailable, StoredFile
from .specs import S3Client
from .specs import S3Storage as S3Spec

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}
# What a broken store raises: botocore's own errors, aiohttp's (a body cut
# mid-transfer is aiohttp.ClientPayloadError), sockets', and our deadline's.
_FAILURES = (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError)
T = TypeVar("T")


def _failure(exc: Exception) -> StorageUnavailable:
    """Name the kind of S3 failure for metrics and for the status code."""
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return StorageUnavailable("timeout", str(exc))
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        kind = "denied" if status == 403 else "changed" if status == 412 else "upstream"
        return StorageUnavailable(kind, f"S3 answered {status} {code}")
    if isinstance(exc, (BotoConnectionError, aiohttp.ClientError, ConnectionError)):
        return StorageUnavailable("connection", str(exc) or type(exc).__name__)
    return StorageUnavailable("upstream", f"{type(exc).__name__}: {exc}")


class S3Object:
    """One object version found by HEAD; spans are read with ranged GETs."""

    __slots__ = ("_key", "_storage", "etag", "mtime", "size", "whole")

    def __init__(self, storage: S3Storage, key: str, size: int, mtime: int, etag: str) -> None:
        self.size = size
        self.mtime = mtime
        self.etag = etag
        self.whole = None  # bodies always stream from S3
        self._storage = storage
        self._key = key

    async def iter_bytes(self, start: int, stop: int, pace: Callable[[], int] | None = None) -> AsyncIterator[bytes]:
        if start >= stop:
            return
        storage = self._storage
        try:
            response = await storage.bounded(
                storage.streams.get_object(
                    Bucket=storage.bucket, Key=self._key, Range=f"bytes={start}-{stop - 1}", IfMatch=self.etag
                )
            )
        except _FAILURES as exc:
            if isinstance(exc, ClientError):
                storage.forget(self._key)  # replaced or gone since the lookup: look again next time
            raise _failure(exc) from None
        body = response["Body"]
        if response.get("ETag") not in (None, self.etag):
            # An S3-compatible store that ignores If-Match: never mix two versions in one response.
            body.close()
            storage.forget(self._key)
            raise StorageUnavailable("changed", f"S3 answered ETag {response.get('ETag')} for {self.etag}")
        complete = False
        try:
            while start < stop:
                try:
                    data = await body.read(min(pace() if pace is not None else storage.chunk, stop - start))
                except _FAILURES as exc:
                    raise _failure(exc) from None
                if not data:
                    raise StorageUnavailable("truncated", f"S3 body ended at {start} of {stop}")
                start += len(data)
                yield data
            complete = True
        finally:
            # A body read to its end goes back to the pool; one abandoned
            # midway (client gone, failure) is closed so S3 stops sending.
            if complete:
                body.release()
            else:
                body.close()

    async def close(self) -> None:
        return None


_LOOKUP_POOL = 16  # HEADs are short: a few connections serve many requests
_READY_SECONDS = 5.0  # a bucket's HEAD for /readyz is remembered this long
_FOUND_ENTRIES = 10000  # objects whose lookup is remembered (s3.cache_seconds)
_BUCKET_SECONDS = 30.0  # that the bucket answers is remembered this long (a 404 is believed meanwhile)


class S3Storage:
    label = "s3"
    local = False

    def __init__(self, spec: S3Spec, client: S3Client, chunk: int) -> None:
        self.name = f"{spec.url}@{client.endpoint_url or 'aws'}"
        self.bucket = spec.bucket
        self.prefix = spec.prefix
        self.handoff = "redirect" if spec.redirect else None
        self.redirect_seconds = spec.redirect_seconds
        self.chunk = chunk
        self._client_settings = client
        # Each attempt may take a connect and a read timeout; nothing waits longer.
        self._deadline = (client.connect_timeout + client.read_timeout) * client.max_attempts
        self._stack = contextlib.AsyncExitStack()
        self._ready: tuple[float, bool] = (0.0, False)
        # When the bucket was last asked for, and what was wrong with it then (None: it answered).
        self._bucket: tuple[float, StorageUnavailable | None] = (-_BUCKET_SECONDS, None)
        self._found: LruCache[str, S3Object] = LruCache(_FOUND_ENTRIES, seconds=client.cache_seconds)
        self.lookups: Any = None  # set by start()
        self.streams: Any = None

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    async def start(self) -> None:
        settings = self._client_settings
        session = aioboto3.Session()

        async def client(pool: int) -> Any:
            config = AioConfig(
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                # total_max_attempts counts the first try; botocore's max_attempts would not.
                retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
                max_pool_connections=pool,
            )
            return await self._stack.enter_async_context(
                session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)
            )

        self.lookups = await client(_LOOKUP_POOL)
        self.streams = await client(settings.max_pool_connections)

    async def aclose(self) -> None:
        await self._stack.aclose()
        self.lookups = self.streams = None

    async def bounded(self, call: Awaitable[T]) -> T:
        """`call`, failing with TimeoutError past the deadline (a full pool waits too)."""
        async with asyncio.timeout(self._deadline):
            return await call

    def forget(self, key: str) -> None:
        self._found.forget(key)

    async def open(self, path: str) -> S3Object:
        key = self.prefix + path
        now = time.monotonic()
        found = self._found.get(key, now)
        if found is not None:
            return found
        try:
            head = await self.bounded(self.lookups.head_object(Bucket=self.bucket, Key=key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                await self._bucket_answers()
                raise NotFound("not_found") from None
            raise _failure(exc) from None
        except _FAILURES as exc:
            raise _failure(exc) from None
        found = S3Object(self, key, head["ContentLength"], int(head["LastModified"].timestamp()), head["ETag"])
        self._found.put(key, found, now)
        return found

    async def handoff_url(self, file: StoredFile, path: str, content_type: str, disposition: str) -> str:
        """A presigned GET that makes S3 answer with our type and file name."""
        return await self.lookups.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.prefix + path,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=self.redirect_seconds,
        )

    async def _bucket_answers(self) -> None:
        """A HEAD of a key answers 404 alike for a missing key, a missing bucket and a wrong endpoint
        path: before a 404 is believed, the bucket must answer (what it said is remembered a while)."""
        checked_at, problem = self._bucket
        now = time.monotonic()
        if now - checked_at >= _BUCKET_SECONDS:
            try:
                await self.bounded(self.lookups.head_bucket(Bucket=self.bucket))
                problem = None
            except ClientError as exc:  # 404 (no such bucket, or not this endpoint), 403: not there for us
                problem = _failure(exc)
            except _FAILURES as exc:  # the store itself failing: not remembered
                raise _failure(exc) from None
            self._bucket = (now, problem)
        if problem is not None:
            raise StorageUnavailable(problem.kind, f"the bucket {self.bucket} does not answer: {problem}")

    async def ready(self) -> bool:
        """HEAD on the bucket, remembered for a few seconds so probes stay cheap."""
        checked_at, ok = self._ready
        now = time.monotonic()
        if now - checked_at < _READY_SECONDS:
            return ok
        try:
            await self.bounded(self.lookups.head_bucket(Bucket=self.bucket))
            ok = True
        except _FAILURES:
            ok = False
        self._ready = (now, ok)
        return ok
