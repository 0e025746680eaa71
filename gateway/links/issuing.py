"""Issuing links: the legacy token for a path, signed when the link carries options or strict mode is on.

The token is byte for byte what the telephony platform makes; what a
signed link adds (expiry, inline playback, a download name, the listening
page, a channel, a mask) is covered by its signature, so none of it can be
edited. A masked link's token is made with the key derived for masked links
(`tokens.masked_key`), never the legacy token: without its query it names
nothing, so it cannot be turned back into a link to the original.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..transcode.spec import Mask
from .masks import mask_text
from .signing import EXPIRES, LinkSigner
from .tokens import encrypt_path, masked_key
from .views import CHANNEL, MASK, PLAYER


@dataclass(frozen=True, slots=True)
class Issued:
    record_url: str
    path: str  # as in the token: /300/x.mp3
    expires_at: int | None  # Unix seconds
    signed: bool


class Issuer:
    def __init__(
        self,
        key: bytes,
        signer: LinkSigner,
        public_url: str,
        require_signed: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.signer = signer
        self.public_url = public_url
        self.require_signed = require_signed
        self.clock = clock

    def issue(
        self,
        confined: str,
        *,
        expires_in: int | None = None,
        inline: bool = False,
        filename: str | None = None,
        player: bool = False,
        channel: int | None = None,
        mask: Mask = (),
    ) -> Issued:
        """A link to `confined` (`300/x.mp3`): plain legacy unless it carries options or strict mode is on.

        `mask` is canonical (`masks.canonical`); a masked link is always signed.
        """
        path = "/" + confined
        token = encrypt_path(path, masked_key(self.key) if mask else self.key)
        params: dict[str, str] = {}
        expires_at = None
        if expires_in is not None:
            expires_at = int(self.clock()) + expires_in
            params[EXPIRES] = str(expires_at)
        if inline:
            params["inline"] = "1"
        if filename is not None:
            params["filename"] = filename
        if player:
            params[PLAYER] = "1"
        if channel is not None:
            params[CHANNEL] = str(channel)
        if mask:
            params[MASK] = mask_text(mask)
        url = f"{self.public_url}/{token}"
        signed = bool(params) or self.require_signed
        if signed:
            url += "?" + self.signer.sign(token, params)
        return Issued(url, path, expires_at, signed)
