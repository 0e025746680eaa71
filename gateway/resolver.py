"""From a token to an open file: codec, confinement and storage tiers together.

Knows tokens and storages but not HTTP. Every way a token can fail to name
a file ends in `Unresolved` with a reason label, so the edge can answer all
of them with the same 404 while logs and metrics keep the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from .metrics import STORAGE_ERRORS, child
from .paths import PathRefused, confine
from .storage import NotFound, Storage, StorageUnavailable, StoredFile
from .tokens import TokenError, decrypt_token

log = logging.getLogger("gateway.resolver")


class Unresolved(Exception):
    """The token names nothing we serve; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Resolver:
    def __init__(self, keys: Sequence[bytes], storages: Sequence[Storage], cache_size: int = 16384) -> None:
        self._keys = tuple(keys)
        self._storages = tuple(storages)
        # Decoding is a pure function of the token: memoise it, not the file lookup.
        self.paths = lru_cache(maxsize=cache_size)(self._paths)

    def _paths(self, token: str) -> tuple[str, ...]:
        """Confined relative paths the token opens to, in key order."""
        paths: list[str] = []
        refusal: PathRefused | None = None
        for _, path in decrypt_token(token, self._keys):
            try:
                confined = confine(path)
            except PathRefused as exc:
                refusal = refusal or exc
                continue
            if confined not in paths:
                paths.append(confined)
        if not paths:
            assert refusal is not None
            raise refusal
        return tuple(paths)

    async def open(self, token: str) -> tuple[StoredFile, str, Storage]:
        """The first (key, storage) in order holding the file.

        A storage that fails is logged and counted, and the next is tried: a
        later tier holding the file still serves it. When none does, an
        outage raises StorageUnavailable rather than Unresolved, because a
        broken store must not look like a missing file.
        """
        try:
            paths = self.paths(token)
        except (TokenError, PathRefused) as exc:
            raise Unresolved(exc.reason, str(exc)) from None
        first_miss: NotFound | None = None
        failure: StorageUnavailable | None = None
        for path in paths:
            for storage in self._storages:
                try:
                    return await storage.open(path), path, storage
                except NotFound as exc:
                    first_miss = first_miss or exc
                except StorageUnavailable as exc:
                    log.error("storage %s failed kind=%s: %s", storage.label, exc.kind, exc)
                    child(STORAGE_ERRORS, storage.label, exc.kind).inc()
                    failure = failure or exc
        if failure is not None:
            raise failure
        assert first_miss is not None
        raise Unresolved(first_miss.reason, str(first_miss))
