"""The revocation list: links and path prefixes that must no longer be served.

A plain text file, one entry per line, `#` for comments:
- a token or a whole link URL revokes that link (signed or not);
- a path (`/300/x.mp3`) revokes every link to that file;
- a path ending in `/` (`/300/`) revokes every link below it.

The edge re-reads the file when it changes (checked about once a second,
off the event loop), so revoking needs no restart; in a multi-replica
deployment every replica mounts the same file (a ConfigMap or a shared
volume).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

import aiofiles
from aiofiles import os as aios

from .paths import PathRefused, confine

log = logging.getLogger("gateway.revocation")


_COMMENT = re.compile(r"(?:^|\s)#")


def _token_of(entry: str) -> str:
    """The token of a link given whole (URL), relative (`/TOKEN?…`) or bare."""
    entry = urlsplit(entry).path if "://" in entry else entry.partition("?")[0]
    return entry.rstrip("/").rpartition("/")[2].rstrip("=")


class Revocations:
    """What is revoked now; `load()`/`watch()` keep it in step with the file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tokens: frozenset[str] = frozenset()
        self.files: frozenset[str] = frozenset()
        self.prefixes: tuple[str, ...] = ()
        self._seen: tuple[int, int, int] | None = None

    def parse(self, text: str) -> None:
        tokens, files, prefixes = set(), set(), []
        for number, raw in enumerate(text.splitlines(), 1):
            # `#` starts a comment only at the start or after a space: names may contain it.
            entry = _COMMENT.split(raw, maxsplit=1)[0].strip()
            if not entry:
                continue
            if entry.startswith("/") and "://" not in entry and "?" not in entry:
                try:
                    confined = confine(entry)
                except PathRefused as exc:
                    log.warning("revocation list line %d ignored: %s", number, exc)
                    continue
                if entry.endswith("/"):
                    prefixes.append(confined + "/")
                else:
                    files.add(confined)
            else:
                tokens.add(_token_of(entry))
        self.tokens, self.files, self.prefixes = frozenset(tokens), frozenset(files), tuple(prefixes)

    def revoked(self, token: str, path: str) -> bool:
        """Whether a link (its token) or the file it names (confined path) is revoked."""
        if not (self.tokens or self.files or self.prefixes):
            return False
        return token.rstrip("=") in self.tokens or path in self.files or path.startswith(self.prefixes)

    async def load(self) -> None:
        """Re-read the file if it changed since the last look (a missing file revokes nothing)."""
        if self.path is None:
            return
        try:
            info = await aios.stat(self.path)
        except FileNotFoundError:
            if self._seen is not None:
                log.warning("revocation list %s disappeared; keeping the last one read", self.path)
            return
        signature = (info.st_ino, info.st_size, info.st_mtime_ns)
        if signature == self._seen:
            return
        async with aiofiles.open(self.path, encoding="utf-8") as handle:
            self.parse(await handle.read())
        self._seen = signature
        log.info(
            "revocation list %s loaded: %d links, %d files, %d prefixes",
            self.path,
            len(self.tokens),
            len(self.files),
            len(self.prefixes),
        )

    async def watch(self, interval: float = 1.0) -> None:
        """Keep reloading until cancelled; a bad read is logged, never fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except (OSError, UnicodeDecodeError) as exc:
                log.error("revocation list %s unreadable: %s", self.path, exc)
