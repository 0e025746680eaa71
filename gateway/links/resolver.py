"""From a token to an open file: codec, confinement and storage tiers together.

Knows tokens and storages but not HTTP. A token opens to one path per key
that decrypts it (almost always exactly one); the first path, in key
order, that a storage holds, in storage order, is the file. Every way a
token can fail to name a file has a reason label, so the edge can answer
all of them with the same 404 while logs and metrics keep the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..common.caching import LruCache
from ..common.metrics import STORAGE_ERRORS, child
from ..storage import NotFound, Storage, StorageUnavailable, StoredFile
from .paths import PathRefused, confine
from .tokens import decrypt_token, masked_key

log = logging.getLogger("gateway.resolver")
_REMEMBERED_TOKEN_CHARS = 256  # longer tokens (paths over ~190 bytes) are decoded each time


class Unresolved(Exception):
    """No storage holds a file at any of the token's paths; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Candidate:
    """One key's reading of a token: the path it decrypts to, and that path confined (None: refused)."""

    key_index: int  # 0-based, in configuration order
    path: str
    confined: str | None
    refused: str = ""  # why confinement refused it


class Resolver:
    def __init__(self, keys: Sequence[bytes], storages: Sequence[Storage], remembered: int = 16384) -> None:
        self._keys = tuple(keys)
        self._masked_keys = tuple(masked_key(key) for key in keys)
        self.storages = tuple(storages)
        # Decoding is a pure function of the token: remember it (for short tokens), never the lookup.
        self._candidates: LruCache[str, tuple[Candidate, ...]] = LruCache(remembered)

    def candidates(self, token: str, masked: bool = False) -> tuple[Candidate, ...]:
        """Every key's reading of `token`, in key order; TokenError when it does not decode or decrypt.

        `masked`: the token of a masked link, made with the keys derived for those (`masked_key`).
        """
        remembered = "\0" + token if masked else token  # no token holds a NUL
        found = self._candidates.get(remembered)
        if found is None:
            keys = self._masked_keys if masked else self._keys
            found = tuple(_candidate(index, path) for index, path in decrypt_token(token, keys))
            if len(token) <= _REMEMBERED_TOKEN_CHARS:
                self._candidates.put(remembered, found)
        return found

    async def lookup(self, paths: Sequence[str]) -> tuple[StoredFile, str, Storage]:
        """The first (path, storage) in order holding a file.

        A storage that fails is logged and counted, and the next is tried: a
        later tier holding the file still serves it. When none does, an
        outage raises StorageUnavailable rather than Unresolved, because a
        broken store must not look like a missing file.
        """
        first_miss: NotFound | None = None
        failure: StorageUnavailable | None = None
        for path in paths:
            for storage in self.storages:
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


def _candidate(index: int, path: str) -> Candidate:
    try:
        return Candidate(index, path, confine(path))
    except PathRefused as exc:
        return Candidate(index, path, None, str(exc))


def confined_paths(candidates: Sequence[Candidate]) -> list[str]:
    """The distinct confined paths of `candidates`, in key order."""
    paths: list[str] = []
    for candidate in candidates:
        if candidate.confined is not None and candidate.confined not in paths:
            paths.append(candidate.confined)
    return paths
