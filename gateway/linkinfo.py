"""What a link is, and what the edge would answer for it.

Shared by the link API (`/v1/links/resolve`, `/v1/links/check`) and by
`storage-gateway link decrypt`, so that both say the same thing: the path
inside the token, which configured key opens it (by index and a short
fingerprint, never the key), its signature and expiry, whether it is
revoked, whether the file exists (looked up exactly as the edge does, with
the same resolver and storages), and optionally what the file really is.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .headers import media_type
from .paths import PathRefused, confine
from .resolver import Resolver, Unresolved
from .revocation import Revocations
from .signing import EXPIRES, SIGNATURE, LinkRefused, LinkSigner
from .sniff import SNIFF_BYTES, Sniffed, mismatch, sniff
from .storage import DEFAULT_FAILURE_STATUS, FAILURE_STATUS, Storage, StorageUnavailable, StoredFile
from .tokens import decrypt_token


class OutsidePrefix(Exception):
    """The link names a path the caller may not see."""


def key_fingerprint(key: bytes) -> str:
    """First 8 hex digits of SHA-256 of the raw 32-byte key: enough to tell keys apart, useless to an attacker."""
    return hashlib.sha256(key).hexdigest()[:8]


def iso8601(seconds: float) -> str:
    """UTC, whole seconds, `Z` suffix: 2017-02-17T11:05:04Z."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_link(link: str) -> tuple[str, dict[str, str]]:
    """The token and the query parameters (last value wins, as at the edge) of a URL or bare token."""
    text = link.strip().partition("#")[0]
    base, _, query = text.partition("?")
    if "://" in base:
        base = urlsplit(base).path
    token = base.rstrip("/").rpartition("/")[2]
    return token, dict(parse_qsl(query, keep_blank_values=True))


@dataclass
class LinkReport:
    token: str
    path: str  # as decrypted from the token
    key_index: int  # 1-based
    key_fingerprint: str
    other_candidates: list[tuple[int, str]]  # (1-based key index, path): other keys that also decrypt it
    signed: bool
    signature_valid: bool | None  # None: not signed
    expires_at: int | None
    expired: bool
    revoked: bool
    exists: bool | None  # None: a storage failed, so it is not known
    size: int | None
    content_type: str  # what the edge sends, from the file name
    last_modified: int | None
    storage: str | None  # label of the storage holding it
    status: int  # what the edge answers a GET with
    reason: str | None  # why it is not served (the edge's metric label), or None
    sniffed: Sniffed | None = None
    sniffed_checked: bool = False  # whether the first bytes were asked for (detected_* fields reported)

    @property
    def served(self) -> bool:
        return self.status < 300

    @property
    def path_refused(self) -> bool:
        return self.reason == "path"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "key": {"index": self.key_index, "fingerprint": self.key_fingerprint},
            "signed": self.signed,
            "signature_valid": self.signature_valid,
            "expires_at": None if self.expires_at is None else iso8601(self.expires_at),
            "expired": self.expired,
            "revoked": self.revoked,
            "exists": self.exists,
            "size": self.size,
            "content_type": self.content_type,
            "last_modified": None if self.last_modified is None else iso8601(self.last_modified),
            "storage": self.storage,
            "served": self.served,
            "status": self.status,
            "reason": self.reason,
        }
        if self.sniffed_checked:
            data["detected_type"] = self.sniffed.media_type if self.sniffed else None
            data["detected_format"] = self.sniffed.format if self.sniffed else None
            data["type_mismatch"] = mismatch(self.path, self.sniffed)
        return data

    def lines(self) -> list[str]:
        """The same fields as `as_json()`, one `name: value` per line (for the shell)."""

        def text(value: object) -> str:
            if value is None:
                return "null"
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)

        data = self.as_json()
        del data["path"]
        key = data.pop("key")
        out = [f"key: {key['index']} (fingerprint {key['fingerprint']})"]
        out += [f"{name}: {text(value)}" for name, value in data.items()]
        out += [f"also_decrypts_with_key: {index} {path}" for index, path in self.other_candidates]
        return out


class LinkInspector:
    """Explains links with the same keys, storages, signer and revocations as the edge."""

    def __init__(
        self,
        keys: Sequence[bytes],
        storages: Sequence[Storage],
        revocations: Revocations,
        require_signed: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = tuple(keys)
        self.fingerprints = tuple(key_fingerprint(key) for key in self.keys)
        self.resolver = Resolver(self.keys, storages)
        self.signer = LinkSigner(self.keys)
        self.revocations = revocations
        self.require_signed = require_signed
        self.clock = clock

    async def inspect(
        self, link: str, allowed: Callable[[str], bool] | None = None, read_head: bool = False
    ) -> LinkReport:
        """Report on `link` (a URL or a bare token).

        Raises TokenError when the token does not decode or no key decrypts
        it, OutsidePrefix when `allowed` refuses the (confined) path it
        names. A path refused by confinement is reported with reason `path`.
        """
        token, params = split_link(link)
        candidates = decrypt_token(token, self.keys)  # raises TokenError
        confined: list[tuple[int, str, str]] = []
        for index, path in candidates:
            try:
                confined.append((index, path, confine(path)))
            except PathRefused:
                continue
        now = self.clock()
        signed = SIGNATURE in params
        signature_valid: bool | None = None
        refusal: LinkRefused | None = None
        if signed:
            try:
                self.signer.verify(token, params, now)
                signature_valid = True
            except LinkRefused as exc:
                refusal = exc
                signature_valid = exc.reason == "expired"  # expiry is only checked after the signature
        elif self.require_signed:
            refusal = LinkRefused(403, "unsigned", "unsigned links are refused (require_signed)")
        exp = params.get(EXPIRES, "")
        # ASCII digits only ("²".isdigit() is true), and no date past the year 5000.
        expires_at = int(exp) if signed and exp.isascii() and exp.isdigit() and len(exp) <= 11 else None
        expired = expires_at is not None and now >= expires_at

        if not confined:
            index, path = candidates[0]
            return self._report(
                token, path, index, candidates, signed, signature_valid, expires_at, expired,
                revoked=self.revocations.revoked(token, ""),
                status=refusal.status if refusal else 404,
                reason=refusal.reason if refusal else "path",
            )  # fmt: skip
        if allowed is not None and not any(allowed(path) for _, _, path in confined):
            raise OutsidePrefix("the link names a path outside the allowed prefix")

        file: StoredFile | None = None
        exists: bool | None
        storage_label: str | None = None
        miss_reason: str | None = None
        failure: StorageUnavailable | None = None
        try:
            file, found, storage = await self.resolver.open(token)
            winner = next(entry for entry in confined if entry[2] == found)
            exists, storage_label = True, storage.label
        except Unresolved as exc:
            winner = next(entry for entry in confined if allowed is None or allowed(entry[2]))
            exists, miss_reason = False, exc.reason
        except StorageUnavailable as exc:
            winner = next(entry for entry in confined if allowed is None or allowed(entry[2]))
            exists, failure = None, exc
        try:
            if allowed is not None and not allowed(winner[2]):
                raise OutsidePrefix("the link names a path outside the allowed prefix")
            sniffed = None
            if file is not None and read_head:
                sniffed = sniff(await _head(file, SNIFF_BYTES))
            index, path, relative = winner
            revoked = self.revocations.revoked(token, relative)
            reason: str | None
            if refusal is not None:
                status, reason = refusal.status, refusal.reason
            elif failure is not None:
                status, reason = FAILURE_STATUS.get(failure.kind, DEFAULT_FAILURE_STATUS), f"storage:{failure.kind}"
            elif not exists:
                status, reason = 404, miss_reason
            elif revoked:
                status, reason = 410, "revoked"
            else:
                status, reason = 200, None
            report = self._report(
                token, path, index, candidates, signed, signature_valid, expires_at, expired, revoked, status, reason
            )
            report.exists, report.storage = exists, storage_label
            if file is not None:
                report.size, report.last_modified = file.size, file.mtime
            report.sniffed, report.sniffed_checked = sniffed, read_head
            return report
        finally:
            if file is not None:
                await file.close()

    def _report(
        self,
        token: str,
        path: str,
        index: int,
        candidates: list[tuple[int, str]],
        signed: bool,
        signature_valid: bool | None,
        expires_at: int | None,
        expired: bool,
        revoked: bool,
        status: int,
        reason: str | None,
    ) -> LinkReport:
        return LinkReport(
            token=token,
            path=path,
            key_index=index + 1,
            key_fingerprint=self.fingerprints[index],
            other_candidates=[(other + 1, p) for other, p in candidates if other != index],
            signed=signed,
            signature_valid=signature_valid,
            expires_at=expires_at,
            expired=expired,
            revoked=revoked,
            exists=False,
            size=None,
            content_type=media_type(path),
            last_modified=None,
            storage=None,
            status=status,
            reason=reason,
        )


async def _head(file: StoredFile, limit: int) -> bytes:
    """Up to `limit` first bytes of an open file."""
    stop = min(file.size, limit)
    if stop <= 0:
        return b""
    chunks: list[bytes] = []
    got = 0
    async with contextlib.aclosing(file.iter_bytes(0, stop)) as pieces:  # type: ignore[type-var]
        async for data in pieces:
            chunks.append(data)
            got += len(data)
            if got >= stop:
                break
    return b"".join(chunks)[:stop]
