"""The revocation list: links and path prefixes that must no longer be served.

A plain text file, one entry per line:
- a line whose first non-blank character is `#` is a comment;
- a path (`/300/x.mp3`) revokes every link to that file, a path ending in
  `/` (`/300/`) every link below it; `?` and `#` are part of a name;
- a path written as a JSON string (`"/300/a #b.mp3 "`) names the file
  exactly, whatever characters it holds (spaces at its end, ` #`);
- anything else is a link: a whole URL, a target (`/TOKEN?…`) or a bare
  token, revoking that link (signed or not); what follows it after a blank
  is a comment.

Every line revokes what it names or is reported when the list is loaded
(a warning naming the line, and `gateway_revocation_entries{kind}`), never
silently ignored. A plain path line that holds ` #` or ends in blanks can
be read two ways (a comment, or spaces that are part of the name): both
readings are revoked, and the line is reported as ambiguous. Revoking too
much is the safe side; the JSON form says exactly which.

The edge re-reads the file when it changes (checked about once a second,
off the event loop), so revoking needs no restart; in a multi-replica
deployment every replica mounts the same file (a ConfigMap or a shared
volume).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
from aiofiles import os as aios

from ..common.metrics import REVOCATION_ENTRIES, child
from .paths import PathRefused, confine
from .tokens import TokenError, split_link, token_bytes

log = logging.getLogger("gateway.revocation")

_INLINE_COMMENT = re.compile(r"\s#")
_BLANKS = " \t"
KINDS = ("link", "file", "prefix", "ignored", "ambiguous")


@dataclass
class _Entries:
    tokens: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    prefixes: list[str] = field(default_factory=list)
    ignored: int = 0
    ambiguous: int = 0

    def paths(self, number: int, *names: str) -> None:
        """Revoke each file or prefix `names` reads as (written with a leading `/`) that confinement allows."""
        allowed: dict[str, str] = {}
        problem = ""
        for name in dict.fromkeys(names):
            try:
                allowed[name] = confine(name)
            except PathRefused as exc:
                problem = str(exc)
        if not allowed:
            return self.ignore(number, problem)
        if len(allowed) > 1:
            log.warning(
                "revocation list line %d is ambiguous (' #' may start a comment, blanks may end the name): "
                "both readings are revoked; write the name as a JSON string to say which",
                number,
            )
            self.ambiguous += 1
        for name, confined in allowed.items():
            if name.endswith("/"):
                self.prefixes.append(confined + "/")
            else:
                self.files.add(confined)

    def ignore(self, number: int, why: str) -> None:
        log.warning("revocation list line %d ignored: %s", number, why)
        self.ignored += 1


def _token_of(entry: str) -> str | None:
    """The canonical token of a link (URL, `/TOKEN?…` or bare), padding dropped; None if it is none."""
    token = split_link(entry)[0]
    try:
        token_bytes(token)
    except TokenError:
        return None
    return token.rstrip("=")


def _parse_line(entries: _Entries, number: int, raw: str) -> None:
    line = raw.lstrip(_BLANKS)
    if not line.rstrip() or line.startswith("#"):
        return
    if line.startswith('"'):
        try:
            name, end = json.JSONDecoder().raw_decode(line)
        except json.JSONDecodeError as exc:
            return entries.ignore(number, f"not a JSON string ({exc.msg})")
        rest = line[end:].strip(_BLANKS)
        if not isinstance(name, str) or not name.startswith("/") or (rest and not rest.startswith("#")):
            return entries.ignore(number, "a quoted entry is one JSON string naming a path that starts with /")
        return entries.paths(number, name)
    if line.startswith("/") and "/" not in line.split("?", 1)[0][1:]:
        token = _token_of(line.split(None, 1)[0])
        if token is not None:  # a target, /TOKEN?…: a link
            entries.tokens.add(token)
            return
    if line.startswith("/"):
        # The whole line, and the line cut at a blank before `#` with its blanks dropped.
        return entries.paths(number, line, _INLINE_COMMENT.split(line, maxsplit=1)[0].rstrip(_BLANKS))
    word = line.split(None, 1)[0]
    rest = line[len(word) :].strip()
    token = _token_of(word)
    if token is None:
        return entries.ignore(number, "neither a path (starting with /) nor a link this gateway opens")
    if rest and not rest.startswith("#"):
        return entries.ignore(number, "text after the link that is not a comment")
    entries.tokens.add(token)


class Revocations:
    """What is revoked now; `load()`/`watch()` keep it in step with the file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.tokens: frozenset[str] = frozenset()
        self.files: frozenset[str] = frozenset()
        self.prefixes: tuple[str, ...] = ()
        self.reported: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._seen: tuple[int, int, int] | None = None

    def parse(self, text: str) -> None:
        entries = _Entries()
        for number, raw in enumerate(text.splitlines(), 1):
            _parse_line(entries, number, raw)
        self.tokens, self.files = frozenset(entries.tokens), frozenset(entries.files)
        self.prefixes = tuple(entries.prefixes)
        self.reported = {
            "link": len(self.tokens),
            "file": len(self.files),
            "prefix": len(self.prefixes),
            "ignored": entries.ignored,
            "ambiguous": entries.ambiguous,
        }
        for kind, count in self.reported.items():
            child(REVOCATION_ENTRIES, kind).set(count)

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
            "revocation list %s loaded: %d links, %d files, %d prefixes (%d lines ignored, %d ambiguous)",
            self.path,
            len(self.tokens),
            len(self.files),
            len(self.prefixes),
            self.reported["ignored"],
            self.reported["ambiguous"],
        )

    async def watch(self, interval: float = 1.0) -> None:
        """Keep reloading until cancelled; a bad read is logged, never fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except (OSError, UnicodeDecodeError) as exc:
                log.error("revocation list %s unreadable: %s", self.path, exc)
