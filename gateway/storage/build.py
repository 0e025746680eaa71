"""The storage backends a configuration names, in fallback order."""

from __future__ import annotations

from collections.abc import Sequence

from . import Storage
from .disk import DiskStorage
from .specs import DiskOptions, FileStorage, S3Client, StorageSpec


def build_storages(specs: Sequence[StorageSpec], chunk: int, disk: DiskOptions, s3: S3Client) -> list[Storage]:
    """One backend per configured storage, in fallback order."""
    storages: list[Storage] = []
    for spec in specs:
        if isinstance(spec, FileStorage):
            storages.append(DiskStorage(spec.root, chunk, disk.cache_seconds, disk.cache_bytes, spec.accel_redirect))
        else:
            # Imported here: botocore costs ~22 MiB per worker that disk-only deployments need not pay.
            from .s3 import S3Storage

            storages.append(S3Storage(spec, s3, chunk))
    return storages
