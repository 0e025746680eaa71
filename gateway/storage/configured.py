"""The storage backends a configuration names, in fallback order."""

from __future__ import annotations

from ..config import FileStorage, Settings
from . import Storage
from .disk import DiskStorage


def build_storages(settings: Settings) -> list[Storage]:
    """One backend per configured storage URL, in fallback order."""
    storages: list[Storage] = []
    for spec in settings.storages:
        if isinstance(spec, FileStorage):
            storages.append(
                DiskStorage(
                    spec.root,
                    settings.chunk_size,
                    settings.disk_cache_seconds,
                    settings.disk_cache_bytes,
                    spec.accel_redirect,
                )
            )
        else:
            # Imported here: botocore costs ~22 MiB per worker that disk-only deployments need not pay.
            from .s3 import S3Storage

            storages.append(S3Storage(spec, settings.s3, settings.chunk_size))
    return storages
