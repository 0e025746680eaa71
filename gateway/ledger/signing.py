"""Signatures of webhook deliveries: `X-Gateway-Signature: t=<unix>,v1=<hex>`.

`v1` is HMAC-SHA256, keyed by the webhook secret, of `"<t>."` followed by
the raw body. The timestamp is part of what is signed, so a receiver that
refuses old timestamps (the replay window, `tolerance`) refuses a captured
delivery replayed later; the comparison is in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Gateway-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE = 300  # seconds a receiver accepts between the signature's time and its own clock


class BadSignature(ValueError):
    """A delivery whose signature does not hold; str() says why, in one line."""


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(secret: bytes, body: bytes, timestamp: int) -> str:
    """The header value for `body` signed at `timestamp` (Unix seconds)."""
    return f"t={timestamp},{SCHEME}={_mac(secret, timestamp, body)}"


def verify(
    secret: bytes, header: str, body: bytes, tolerance: float = DEFAULT_TOLERANCE, now: float | None = None
) -> int:
    """The timestamp of a delivery whose `header` signs `body` with `secret`; BadSignature otherwise."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            if not value.isdigit():
                raise BadSignature(f"timestamp {value[:20]!r} is not Unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            signatures.append(value)
    if timestamp is None:
        raise BadSignature("no timestamp (t=) in the signature header")
    if not signatures:
        raise BadSignature(f"no {SCHEME}= signature in the signature header")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise BadSignature(f"timestamp {timestamp} is {now - timestamp:+.0f} s from now, outside ±{tolerance:g} s")
    expected = _mac(secret, timestamp, body).encode()
    if not any(hmac.compare_digest(expected, candidate.encode("utf-8", "replace")) for candidate in signatures):
        raise BadSignature("signature does not match the body (changed body or timestamp, or another secret)")
    return timestamp
