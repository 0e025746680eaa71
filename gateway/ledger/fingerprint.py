"""A link's fingerprint: who may correlate events by link, without the token in them.

HMAC-SHA256 of the token (without `=` padding, so both spellings of a link
agree), keyed by a key derived from the shared key with a fixed salt, never
the AES key itself; the first 32 hex digits (128 bits). The platform holds
the shared key, so it can compute the fingerprint of any link it issued and
find that link's events; a receiver without the key learns nothing of the
token from it.
"""

from __future__ import annotations

import hmac

SALT = b"storage-gateway/ledger-fingerprint/v1"
DIGITS = 32


def fingerprint_key(shared_key: bytes) -> bytes:
    """The fingerprint key: HMAC-SHA256(shared key, SALT)."""
    return hmac.digest(shared_key, SALT, "sha256")


def fingerprint(key: bytes, token: str) -> str:
    """The fingerprint of link token `token` under `key` (from `fingerprint_key`)."""
    return hmac.digest(key, token.rstrip("=").encode("utf-8", "surrogatepass"), "sha256").hex()[:DIGITS]
