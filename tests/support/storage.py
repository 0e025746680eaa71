"""The storage folder the edge tests share: its known files, their paths in tokens, a secret outside it.

One folder serves every module that needs it (tests/conftest.py makes it
once per session); the real gateway, nginx and the in-process edge all serve
it, so answers can be compared byte for byte. Modules that need odd files
(FIFOs, symlinks, a 256 MiB file) add them under their own subdirectory;
`hostile_files` makes those of the hostile-input tests, under /hostile/.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
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


# -- odd files, for the hostile-input tests ------------------------------------------


@dataclass
class Hostile:
    """Odd files inside the root, under /hostile/."""

    fifo: str
    socket: str
    escape: str  # symlink to the secret outside the root
    alias: str  # relative symlink to a file inside the root
    absolute_alias: str  # absolute symlink to a file inside the root
    out_dir: str  # symlinked directory pointing outside; the secret is inside it
    loop: str
    environ: str  # symlink to the server's own /proc/self/environ (a gateway process's holds the key)
    passwd: str
    locked: str  # mode 000
    locked_data: bytes


@contextlib.contextmanager
def hostile_files(storage: Storage) -> Iterator[Hostile]:
    """Make the odd files under /hostile/ (again, if a module before made them), and unlock them afterwards."""
    base = storage.root / "hostile"
    base.mkdir(exist_ok=True)
    if not os.path.lexists(base / "pipe.mp3"):
        os.mkfifo(base / "pipe.mp3")
    if os.path.lexists(base / "sock.mp3"):
        (base / "sock.mp3").unlink()  # a socket file outlives its listener
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(base / "sock.mp3"))
    links = {
        "escape.mp3": storage.outside / "secret",
        "alias.mp3": Path("..") / P64K.lstrip("/"),
        "absolute-alias.mp3": storage.file(PTREE),
        "outdir": storage.outside,
        "loop.mp3": base / "loop.mp3",
        "environ": Path("/proc/self/environ"),
        "passwd": Path("/etc/passwd"),
    }
    for name, target in links.items():
        if not os.path.lexists(base / name):
            (base / name).symlink_to(target, target_is_directory=name == "outdir")
    locked_data = os.urandom(5000)
    if os.path.lexists(base / "locked.mp3"):
        (base / "locked.mp3").chmod(0o644)
    (base / "locked.mp3").write_bytes(locked_data)
    (base / "locked.mp3").chmod(0)
    try:
        yield Hostile(
            fifo="/hostile/pipe.mp3",
            socket="/hostile/sock.mp3",
            escape="/hostile/escape.mp3",
            alias="/hostile/alias.mp3",
            absolute_alias="/hostile/absolute-alias.mp3",
            out_dir="/hostile/outdir/secret",
            loop="/hostile/loop.mp3",
            environ="/hostile/environ",
            passwd="/hostile/passwd",
            locked="/hostile/locked.mp3",
            locked_data=locked_data,
        )
    finally:
        listener.close()
        (base / "locked.mp3").chmod(0o644)
