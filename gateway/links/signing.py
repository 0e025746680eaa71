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
from urllib.parse import quote, urlencode

from itsdangerous import Signer

from ..common.caching import LruCache
from ..common.values import whole_number
from .decision import Refusal

SALT = b"storage-gateway/signed-link/v1"
SIGNATURE = "sig"
EXPIRES = "exp"
# Every parameter that changes the response is covered by the signature;
# anything else (a CRM's tracking tag) is ignored, so it cannot break a link.
# New ones go at the end: a link signed before they existed keeps its signature.
SIGNED_PARAMETERS = (EXPIRES, "inline", "filename", "format", "peaks", "pixels", "player", "channel", "split", "mask")
# An expiry is Unix seconds up to the end of year 9999, the last date ISO 8601 reports
# (and Python's datetime) can write: the link inspector must be able to say it.
LAST_EXPIRY = 253402300799
EXPIRY_DIGITS = len(str(LAST_EXPIRY))
UNSIGNED = Refusal(403, "unsigned", "unsigned links are refused (require_signed)")
BAD_SIGNATURE = Refusal(403, "signature", "bad or missing signature")
UNREADABLE_EXPIRY = Refusal(403, "signature", "unreadable expiry")
EXPIRED = Refusal(410, "expired", "link expired")


def _message(token: str, params: Mapping[str, str]) -> bytes:
    """The signed text: unambiguous because every value is percent-encoded."""
    covered = "&".join(f"{name}={quote(params[name], safe='')}" for name in SIGNED_PARAMETERS if name in params)
    return f"{token}?{covered}".encode()


def expiry(params: Mapping[str, str]) -> int | None:
    """The link's expiry in Unix seconds, or None when it has none or it is unreadable."""
    text = params.get(EXPIRES)
    seconds = None if text is None else whole_number(text, EXPIRY_DIGITS)
    return None if seconds is None or seconds > LAST_EXPIRY else seconds


class LinkSigner:
    def __init__(self, keys: Sequence[bytes], remembered: int = 16384) -> None:
        # itsdangerous signs with the last key and verifies with all: ours issue with the first.
        self._signer = Signer(list(reversed(keys)), salt=SALT, key_derivation="hmac", digest_method=hashlib.sha256)
        # A signature's validity never changes (expiry is checked apart, every time), and a
        # player seeking through a recording presents the same link again and again. Only
        # good signatures are remembered, by a digest of what they sign: no stream of forged
        # links, however long, can grow this.
        self._good: LruCache[bytes, bool] = LruCache(remembered)

    def sign(self, token: str, params: Mapping[str, str]) -> str:
        """The query string (without `?`) of a signed link for `token`."""
        unknown = set(params) - set(SIGNED_PARAMETERS)
        if unknown:
            raise ValueError(f"cannot sign unknown parameters: {', '.join(sorted(unknown))}")
        signature = self._signer.get_signature(_message(token, params)).decode()
        ordered = [(name, params[name]) for name in SIGNED_PARAMETERS if name in params]
        # Commas stay as they are (RFC 3986 allows them in a query): a mask reads `10-20,50.5-55`.
        return urlencode([*ordered, (SIGNATURE, signature)], safe=",")

    def authentic(self, token: str, params: Mapping[str, str]) -> bool:
        """Whether `sig` is ours over the token and the covered parameters (expiry not checked)."""
        signature = params.get(SIGNATURE, "")
        if not signature:
            return False
        message = _message(token, params)
        digest = hashlib.sha256(message + b"\0" + signature.encode("utf-8", "surrogatepass")).digest()
        if self._good.get(digest):
            return True
        if not self._signer.verify_signature(message, signature):
            return False
        self._good.put(digest, True)
        return True

    def check(self, token: str, params: Mapping[str, str], now: float | None = None) -> Refusal | None:
        """None when the signature is ours and the link has not expired, else why not.

        The signature is checked first, so an attacker learns nothing about
        expiry by editing `exp`.
        """
        if not self.authentic(token, params):
            return BAD_SIGNATURE
        if EXPIRES in params:
            expires = expiry(params)
            if expires is None:
                return UNREADABLE_EXPIRY
            if (time.time() if now is None else now) >= expires:
                return EXPIRED
        return None
