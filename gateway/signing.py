"""Signed, expiring links: the integrity and expiry the legacy token lacks.

A signed link keeps the legacy token as its path, so old readers still
decode it, and adds query parameters: `exp` (Unix seconds), the options that
change the response (`inline`, `filename`, …) and `sig`, an HMAC-SHA256 made
with itsdangerous over the token and those parameters. The signing key is
derived from the shared key (HMAC with a fixed salt), never the AES key
itself. Verification is constant-time and accepts every configured key, so
rotation works as it does for the token.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from urllib.parse import quote, urlencode

from itsdangerous import Signer

SALT = b"storage-gateway/signed-link/v1"
SIGNATURE = "sig"
EXPIRES = "exp"
# Every parameter that changes the response is covered by the signature;
# anything else (a CRM's tracking tag) is ignored, so it cannot break a link.
SIGNED_PARAMETERS = (EXPIRES, "inline", "filename", "format", "peaks", "pixels")


class LinkRefused(Exception):
    """A signed link that must not be served: `status` 403 or 410, `reason` the metric label."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


def _message(token: str, params: Mapping[str, str]) -> bytes:
    """The signed text: unambiguous because every value is percent-encoded."""
    covered = "&".join(f"{name}={quote(params[name], safe='')}" for name in SIGNED_PARAMETERS if name in params)
    return f"{token}?{covered}".encode()


class LinkSigner:
    def __init__(self, keys: Sequence[bytes], cache_size: int = 16384) -> None:
        # itsdangerous signs with the last key and verifies with all: ours issue with the first.
        self._signer = Signer(list(reversed(keys)), salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256)
        # A signature's validity never changes (expiry is checked apart, every time), and a
        # player seeking through a recording presents the same link again and again.
        self._authentic = lru_cache(maxsize=cache_size)(self._check)

    def _check(self, token: str, covered: tuple[str | None, ...], signature: str) -> bool:
        params = {name: value for name, value in zip(SIGNED_PARAMETERS, covered) if value is not None}
        return self._signer.verify_signature(_message(token, params), signature)

    def sign(self, token: str, params: Mapping[str, str]) -> str:
        """The query string (without `?`) of a signed link for `token`."""
        unknown = set(params) - set(SIGNED_PARAMETERS)
        if unknown:
            raise ValueError(f"cannot sign unknown parameters: {', '.join(sorted(unknown))}")
        signature = self._signer.get_signature(_message(token, params)).decode()
        ordered = [(name, params[name]) for name in SIGNED_PARAMETERS if name in params]
        return urlencode([*ordered, (SIGNATURE, signature)])

    def verify(self, token: str, params: Mapping[str, str], now: float | None = None) -> None:
        """Raise LinkRefused unless the signature is ours and the link has not expired.

        The signature is checked first, so an attacker learns nothing about
        expiry by editing `exp`.
        """
        signature = params.get(SIGNATURE, "")
        covered = tuple(params.get(name) for name in SIGNED_PARAMETERS)
        if not signature or not self._authentic(token, covered, signature):
            raise LinkRefused(403, "signature", "bad or missing signature")
        expires = params.get(EXPIRES)
        if expires is not None:
            # isdigit() alone admits "²" and 5000-digit strings, which int() refuses.
            if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
                raise LinkRefused(403, "signature", "unreadable expiry")
            if (time.time() if now is None else now) >= int(expires):
                raise LinkRefused(410, "expired", "link expired")
