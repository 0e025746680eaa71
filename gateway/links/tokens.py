"""The link token codec: URL-safe base64 of AES-256-ECB over a NUL-padded path.

Pure and HTTP-free so that it can be checked against openssl and other
implementations byte for byte. The format is fixed by existing links; its
weaknesses (deterministic, no integrity) are documented in the README.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from Crypto.Cipher import AES

BLOCK = 16
KEY_BYTES = 32
# Tokens are never shorter than one block (22 characters unpadded), and a
# path longer than 4 KiB is not a path any storage holds: refuse before work.
MIN_TOKEN_CHARS = 22
MAX_TOKEN_CHARS = 5600
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")
_MASKED_SALT = b"storage-gateway/masked-link/v1"


class TokenError(ValueError):
    """A token that does not decode; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_key(text: str) -> bytes:
    """Read one key in the accepted forms: 64 hex digits or `base64:` + 32 bytes."""
    text = text.strip()
    if text.startswith("base64:"):
        try:
            raw = base64.b64decode(text[7:].strip(), validate=True)
        except binascii.Error:
            raise ValueError("base64: key is not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise ValueError(f"base64: key decodes to {len(raw)} bytes, expected {KEY_BYTES}")
        return raw
    if len(text) != 2 * KEY_BYTES:
        raise ValueError(f"key has {len(text)} characters, expected 64 hex digits or base64:…")
    # bytes.fromhex() skips whitespace: a key with inner spaces would come out short.
    if not _HEX_KEY.fullmatch(text):
        raise ValueError("key is not 64 hexadecimal digits")
    return bytes.fromhex(text)


def format_key(key: bytes) -> str:
    """The hex form that `parse_key` reads and other implementations expect."""
    return key.hex()


def encrypt_path(path: str, key: bytes) -> str:
    """Make the token for `path`, exactly as the telephony platform does."""
    data = path.encode("utf-8")
    if not data:
        raise ValueError("empty path")
    data += b"\0" * (-len(data) % BLOCK)
    sealed = AES.new(key, AES.MODE_ECB).encrypt(data)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def masked_key(key: bytes) -> bytes:
    """The AES key a masked link's token is made with: derived from the shared key (HMAC, fixed salt).

    A masked link must never lead to its original, and a signed link's
    token is otherwise the legacy link itself (drop the query and it plays,
    unless strict mode is on). Under this key the same path gives another
    token: read as a legacy link (the shared key) it decrypts to noise, so
    names nothing, and its blocks cannot be cut into a legacy token either.
    """
    return hmac.new(key, _MASKED_SALT, hashlib.sha256).digest()


def token_bytes(token: str) -> bytes:
    """Base64-decode a token (padding optional), refusing anything malformed or non-canonical.

    Base64 leaves the low bits of the last character unused (2 or 4 bits for
    tokens of 16n+1 or 16n+2 bytes mod 3), so one token has several
    spellings that decode alike; only the one every encoder writes (openssl,
    PHP, Node, Java, Python: unused bits zero) is a token, so that a revoked
    link cannot come back under another spelling.
    """
    if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not _TOKEN_RE.fullmatch(token):
        raise TokenError("decode", "not a token")
    body = token.rstrip("=")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("decode", "bad base64") from None
    if not raw or len(raw) % BLOCK:
        raise TokenError("decode", f"{len(raw)} bytes is not a whole number of AES blocks")
    canonical = base64.urlsafe_b64encode(raw).decode("ascii")
    if token != canonical and token != canonical.rstrip("="):
        raise TokenError("decode", "not the canonical base64 spelling of its bytes")
    return raw


def decrypt_token(token: str, keys: Sequence[bytes]) -> list[tuple[int, str]]:
    """Every (key index, path) the token opens to, in key order.

    A wrong key yields random bytes that are almost never valid UTF-8, so
    each key whose plaintext decodes is a candidate; the caller takes the
    first candidate that names an existing file.
    """
    raw = token_bytes(token)
    found = []
    for index, key in enumerate(keys):
        plain = AES.new(key, AES.MODE_ECB).decrypt(raw).rstrip(b"\0")
        try:
            found.append((index, plain.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    if not found:
        raise TokenError("decrypt", "no key decrypts the token to UTF-8")
    return found


def split_link(link: str) -> tuple[str, dict[str, str]]:
    """The token and the query parameters (last value wins, as at the edge) of a link.

    A link is a whole URL, a target (`/TOKEN?…`) or a bare token; a
    `#fragment` is never part of it.
    """
    text = link.strip().partition("#")[0]
    base, _, query = text.partition("?")
    if "://" in base:
        base = urlsplit(base).path
    token = base.rstrip("/").rpartition("/")[2]
    return token, dict(parse_qsl(query, keep_blank_values=True))
