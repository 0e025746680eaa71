"""Directories only the gateway's user may write: the rendition cache, the ledger's outbox."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeDirectory(Exception):
    """A directory that is not this user's alone; str() says why."""


def private_directory(path: Path) -> None:
    """Make `path` (mode 0700) or accept it only if it is a real directory of this user that no one else may write.

    Anyone who can write the rendition cache can plant symlinks in it: make
    the gateway serve a file only its user may read, delete files elsewhere,
    or overwrite them with recording bytes; anyone who can write the ledger's
    outbox can forge or erase what the platform is told about listening. A
    shared /tmp lets any local user create the directory first.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectory(f"{path} is a symlink; give the real directory")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise UnsafeDirectory(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})")
    if info.st_mode & 0o022:
        raise UnsafeDirectory(f"{path} may be written by others (mode {stat.S_IMODE(info.st_mode):04o}); chmod 0700")
