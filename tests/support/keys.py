"""Link keys for the tests: a fresh one, and a token that a given key cannot read."""

from __future__ import annotations

import secrets

from gateway.links.tokens import TokenError, decrypt_token, encrypt_path


def new_key() -> bytes:
    return secrets.token_bytes(32)


def undecryptable_token(key: bytes) -> str:
    """A well-formed token that `key` does not decrypt to UTF-8 (reason `decrypt`)."""
    other = new_key()
    for number in range(1000):
        token = encrypt_path(f"/foreign/{number}.mp3", other)
        try:
            decrypt_token(token, [key])
        except TokenError as exc:
            if exc.reason == "decrypt":
                return token
    raise AssertionError("no undecryptable token found")
