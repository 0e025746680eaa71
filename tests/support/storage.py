"""The storage folder the edge tests share: its known files, their paths in tokens, a secret outside it.

One folder serves every module that needs it (tests/conftest.py makes it
once per session); the real gateway, nginx and the in-process edge all serve
it, so answers can be compared byte for byte. Modules that need odd files
(FIFOs, symlinks, a 256 MiB file) add them under their own subdirectory.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

KIB = 1024
MIB = 1024 * KIB

# Storage paths, as they appear inside link tokens.
P64K = "/random-64k.mp3"
P1 = "/one-byte.wav"
P0 = "/empty.mp3"
P8M = "/big-8m.ogg"
PCYR = "/звонок клиента.mp3"
PSPACES = "/name with spaces.mp3"
PSPECIAL = "/odd ?#&%+= name.mp3"
P16 = "/pad16/abcde.mp3"  # 16 UTF-8 bytes: token needs `==` padding
P32 = "/pad32/abcdefghijklmnopqrstu.mp3"  # 32 UTF-8 bytes: token needs `=` padding
PTREE = "/300/2017-02-17-11-05-04_in_300_uhl4.mp3"
TYPED = {
    "/types/a.mp3": "audio/mpeg",
    "/types/a.wav": "audio/wav",
    "/types/a.ogg": "audio/ogg",
    "/types/a.opus": "audio/ogg",
    "/types/a.m4a": "audio/mp4",
    "/types/a.webm": "video/webm",
    "/types/a.mp4": "video/mp4",
    "/types/a.MP3": "audio/mpeg",
    "/types/a.unknownext": "application/octet-stream",
    "/types/noextension": "application/octet-stream",
}
FIXED_MTIME = 1487329504  # 2017-02-17 11:05:04 UTC: validators stay the same between runs
SECRET_MARKER = b"SECRET-OUTSIDE-THE-ROOT-" + secrets.token_hex(16).encode()


@dataclass
class Storage:
    """The storage root, its known files, and a secret file outside it."""

    root: Path
    outside: Path  # a sibling of root holding `secret`
    contents: dict[str, bytes] = field(default_factory=dict)

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def data(self, path: str) -> bytes:
        return self.contents[path]

    def size(self, path: str) -> int:
        return self.file(path).stat().st_size

    def add(self, path: str, data: bytes) -> Path:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.contents[path] = data
        return target


def fill_storage(storage: Storage) -> None:
    assert len(P16.encode()) == 16 and len(P32.encode()) == 32
    storage.add(P64K, os.urandom(64 * KIB))
    storage.add(P1, b"\xa5")
    storage.add(P0, b"")
    storage.add(P8M, os.urandom(8 * MIB))
    storage.add(PCYR, os.urandom(3000))
    storage.add(PSPACES, os.urandom(2000))
    storage.add(PSPECIAL, os.urandom(1000))
    storage.add(P16, os.urandom(1600))
    storage.add(P32, os.urandom(3200))
    storage.add(PTREE, os.urandom(40_000))
    for path in TYPED:
        storage.add(path, os.urandom(100))
    for path in storage.contents:
        os.utime(storage.file(path), (FIXED_MTIME, FIXED_MTIME))


def file_url(root: Path) -> str:
    """The `file://` storage URL of a directory (GATEWAY_STORAGE)."""
    return "file://" + quote(str(root.resolve()))
