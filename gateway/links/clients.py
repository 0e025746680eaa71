"""Link-API clients: who may issue and inspect links, and under which path prefix.

A client is configured as `id:sha256hex(bearer token):/allowed/prefix/`;
only the hash of its token is ever stored. The prefix is confined like a
link's path, so `..` cannot widen it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .paths import PathRefused, confine

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")


@dataclass(frozen=True)
class ApiClient:
    """One link-API client: its id, the SHA-256 of its bearer token, the paths it may link to.

    `prefix` is confined and ends with `/` (`300/`), or is empty for the whole storage.
    """

    id: str
    token_sha256: bytes = field(repr=False)
    prefix: str

    @property
    def display_prefix(self) -> str:
        return "/" + self.prefix

    @property
    def scoped(self) -> bool:
        """Whether the client is limited to part of the storage (a prefix other than `/`)."""
        return bool(self.prefix)

    def allows(self, confined_path: str) -> bool:
        """Whether a confined path (`300/x.mp3`) lies under this client's prefix."""
        return confined_path.startswith(self.prefix)


def parse_client(entry: str) -> ApiClient:
    """Parse one `id:sha256hex(bearer token):/allowed/prefix/`; ValueError says what is wrong."""
    parts = entry.split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{entry[:40]!r} is not id:sha256hex:/prefix/")
    client_id, digest, prefix = (part.strip() for part in parts)
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client id {client_id[:40]!r} must be 1-64 letters, digits, '.', '_', '@' or '-'")
    if len(digest) != 64:
        raise ValueError(f"client {client_id!r}: token hash has {len(digest)} characters, expected 64 hex digits")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"client {client_id!r}: token hash is not hexadecimal")
    if not prefix.startswith("/"):
        raise ValueError(f"client {client_id!r}: prefix {prefix!r} must start with /")
    if prefix.strip("/") == "":
        confined = ""
    else:
        try:
            confined = confine(prefix) + "/"
        except PathRefused as exc:
            raise ValueError(f"client {client_id!r}: prefix {prefix!r} refused: {exc}") from None
    return ApiClient(id=client_id, token_sha256=bytes.fromhex(digest), prefix=confined)
