"""What a link is, and what the edge would answer for it.

Shared by the link API (`/v1/links/resolve`, `/v1/links/check`) and by
`storage-gateway link decrypt`, so that both say the same thing: the path
inside the token, which configured key opens it (by index and a short
fingerprint, never the key), its signature and expiry, whether it is
revoked, whether the file exists, and optionally what the file really is.
The status and reason are not worked out here: they are the link
admission's own decision (`admission.trace`), the code the edge serves from.

A caller limited to a prefix learns nothing about a link outside it, nor
about one whose path cannot be confined: both are `NotALink`, as garbage is.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..common.media import media_type
from ..storage import StoredFile
from ..transcode.sniff import SNIFF_BYTES, Sniffed, mismatch, sniff
from .admission import Admission, Trace
from .decision import Refusal
from .tokens import TokenError, split_link


class NotALink(Exception):
    """Nothing may be told about this link to this caller: the answer is that for garbage."""


def key_fingerprint(key: bytes) -> str:
    """First 8 hex digits of SHA-256 of the raw 32-byte key: enough to tell keys apart, useless to an attacker."""
    return hashlib.sha256(key).hexdigest()[:8]


def iso8601(seconds: float) -> str:
    """UTC, whole seconds, `Z` suffix: 2017-02-17T11:05:04Z."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    detail: str | None = None  # what the edge's log says with the reason
    sniffed: Sniffed | None = None
    sniffed_checked: bool = False  # whether the first bytes were asked for (detected_* fields reported)

    @property
    def served(self) -> bool:
        return self.status < 300

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
            "detail": self.detail,
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
    """Explains links from the decisions of the edge's own admission."""

    def __init__(self, keys: Sequence[bytes], admission: Admission) -> None:
        self.fingerprints = tuple(key_fingerprint(key) for key in keys)
        self.admission = admission

    async def inspect(
        self, link: str, allowed: Callable[[str], bool] | None = None, read_head: bool = False
    ) -> LinkReport:
        """Report on `link` (a URL or a bare token).

        Raises TokenError when the token does not decode or no key decrypts
        it, and NotALink when `allowed` is given and the link names nothing
        the caller may see (outside its prefix, or not confinable).
        """
        token, params = split_link(link)
        trace = await self.admission.trace(token, params, allowed)
        try:
            if not trace.candidates:
                decision = trace.decision
                assert isinstance(decision, Refusal)
                raise TokenError(decision.reason, decision.detail)
            if trace.opaque and allowed is not None:
                raise NotALink("the link names nothing this caller may see")
            return await self._report(trace, read_head)
        finally:
            await trace.close()

    async def _report(self, trace: Trace, read_head: bool) -> LinkReport:
        chosen = trace.chosen
        assert chosen is not None and trace.decision is not None
        decision = trace.decision
        refusal = decision if isinstance(decision, Refusal) else None
        file = trace.file
        sniffed = sniff(await _head(file, SNIFF_BYTES)) if file is not None and read_head else None
        now = self.admission.clock()
        return LinkReport(
            token=trace.token,
            path=chosen.path,
            key_index=chosen.key_index + 1,
            key_fingerprint=self.fingerprints[chosen.key_index],
            other_candidates=[(c.key_index + 1, c.path) for c in trace.candidates if c is not chosen],
            signed=trace.signed,
            signature_valid=trace.signature_valid,
            expires_at=trace.expires_at,
            expired=trace.expires_at is not None and now >= trace.expires_at,
            revoked=trace.revoked,
            exists=trace.exists,
            size=None if file is None else file.size,
            content_type=media_type(chosen.path),
            last_modified=None if file is None else file.mtime,
            storage=None if trace.storage is None else trace.storage.label,
            status=decision.status,
            reason=None if refusal is None else refusal.reason,
            detail=None if refusal is None else refusal.detail,
            sniffed=sniffed,
            sniffed_checked=read_head,
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
