"""Recordings in S3 or an S3-compatible store (MinIO, Ceph, moto), on aioboto3.

One client per worker, opened at start-up and closed at shutdown. A file is
looked up with HEAD (cheap, and it tells a missing key from a broken
store), and each span is one ranged GET streamed in bounded chunks, pinned
to the ETag seen at lookup so a replaced object cannot be spliced into one
response. Failures of the store are `StorageUnavailable`, never `NotFound`:
an outage must not look like a missing file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    ConnectTimeoutError,
    ReadTimeoutError,
)

from ..config import S3Client, S3Storage as S3Spec
from . import NotFound, StorageUnavailable

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def _failure(exc: Exception) -> StorageUnavailable:
    """Name the kind of S3 failure for metrics and for the status code."""
    if isinstance(exc, (ConnectTimeoutError, ReadTimeoutError, TimeoutError)):
        return StorageUnavailable("timeout", str(exc))
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        kind = "denied" if status == 403 else "changed" if status == 412 else "upstream"
        return StorageUnavailable(kind, f"S3 answered {status} {code}")
    if isinstance(exc, BotoConnectionError):
        return StorageUnavailable("connection", str(exc))
    return StorageUnavailable("upstream", f"{type(exc).__name__}: {exc}")


class S3Object:
    """One object version found by HEAD; spans are read with ranged GETs."""

    __slots__ = ("size", "mtime", "etag", "_storage", "_key")

    def __init__(self, storage: S3Storage, key: str, size: int, mtime: int, etag: str) -> None:
        self.size = size
        self.mtime = mtime
        self.etag = etag
        self._storage = storage
        self._key = key

    async def iter_bytes(self, start: int, stop: int) -> AsyncIterator[bytes]:
        if start >= stop:
            return
        storage = self._storage
        try:
            response = await storage.client.get_object(
                Bucket=storage.bucket, Key=self._key, Range=f"bytes={start}-{stop - 1}", IfMatch=self.etag
            )
        except (BotoCoreError, ClientError, OSError) as exc:
            raise _failure(exc) from None
        body = response["Body"]
        complete = False
        try:
            while start < stop:
                try:
                    data = await body.read(min(storage.chunk, stop - start))
                except (BotoCoreError, OSError) as exc:
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


class S3Storage:
    label = "s3"
    local = False

    def __init__(self, spec: S3Spec, client: S3Client, chunk: int) -> None:
        self.bucket = spec.bucket
        self.prefix = spec.prefix
        self.handoff = "redirect" if spec.redirect else None
        self.redirect_seconds = spec.redirect_seconds
        self.chunk = chunk
        self._client_settings = client
        self._stack = contextlib.AsyncExitStack()
        self._ready: tuple[float, bool] = (0.0, False)
        self.client = None  # set by start()

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    async def start(self) -> None:
        settings = self._client_settings
        config = AioConfig(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
            max_pool_connections=settings.max_pool_connections,
        )
        session = aioboto3.Session()
        self.client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)
        )

    async def aclose(self) -> None:
        await self._stack.aclose()
        self.client = None

    async def open(self, path: str) -> S3Object:
        key = self.prefix + path
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise NotFound("not_found") from None
            raise _failure(exc) from None
        except (BotoCoreError, OSError) as exc:
            raise _failure(exc) from None
        return S3Object(self, key, head["ContentLength"], int(head["LastModified"].timestamp()), head["ETag"])

    async def handoff_url(self, path: str, content_type: str, disposition: str) -> str:
        """A presigned GET that makes S3 answer with our type and file name."""
        return await self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.prefix + path,
                "ResponseContentType": content_type,
                "ResponseContentDisposition": disposition,
            },
            ExpiresIn=self.redirect_seconds,
        )

    async def ready(self) -> bool:
        """HEAD on the bucket, remembered for a few seconds so probes stay cheap."""
        checked_at, ok = self._ready
        now = time.monotonic()
        if now - checked_at < self._client_settings.ready_cache_seconds:
            return ok
        try:
            await self.client.head_bucket(Bucket=self.bucket)
            ok = True
        except (BotoCoreError, ClientError, OSError):
            ok = False
        self._ready = (now, ok)
        return ok
