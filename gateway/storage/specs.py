"""What a configured storage is, before anything is opened: the storage layer's own specs.

Configuration produces these from URLs; `build` turns them into backends.
Kept here, not in the configuration package, so that storage depends on
nothing above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class FileStorage:
    """A local directory holding recordings (`file:///abs/dir`).

    `accel_redirect`: an nginx internal location (`/_recordings/`) that
    serves this directory; files are then handed to nginx to send.
    """

    root: Path
    accel_redirect: str | None = None

    @property
    def name(self) -> str:
        """What identifies this storage among others sharing a rendition cache."""
        return self.root.as_uri()


@dataclass(frozen=True)
class S3Storage:
    """A bucket and key prefix (`s3://bucket[/prefix]`); `redirect` hands off with a presigned URL."""

    bucket: str
    prefix: str = ""
    redirect: bool = False
    redirect_seconds: int = 300

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


StorageSpec = FileStorage | S3Storage


class S3Client(Protocol):
    """How every S3 storage of a process talks to its endpoint (the `[s3]` settings)."""

    @property
    def endpoint_url(self) -> str | None: ...
    @property
    def region(self) -> str | None: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def max_pool_connections(self) -> int: ...
    @property
    def cache_seconds(self) -> float: ...


class DiskOptions(Protocol):
    """What every disk storage of a process shares (the `[disk]` settings)."""

    @property
    def cache_seconds(self) -> float: ...
    @property
    def cache_bytes(self) -> int: ...
