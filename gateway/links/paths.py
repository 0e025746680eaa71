"""Lexical confinement of a decrypted path to the storage root.

This is the pure half of confinement: it turns the path inside a token into
a relative path that cannot name anything above the root. Symlinks and file
types are checked by the storage backend, which is the only part that sees
the file system.
"""

from __future__ import annotations

import re

MAX_PATH_BYTES = 4096
# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: none
# belongs in a recording name, and all of them can forge or break log lines.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class PathRefused(ValueError):
    """The decrypted path may not be served; the message says why (for logs)."""

    reason = "path"


def confine(path: str) -> str:
    """Normalise `path` to a relative POSIX path below the root, or refuse it.

    Leading slashes are ignored (links carry `/300/x.mp3`), `.` segments and
    repeated slashes vanish, `..` is resolved lexically and refused where it
    would climb above the root. NUL and control characters are refused
    outright: no recording name contains them, and they confuse logs and
    file systems.
    """
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathRefused("path too long")
    if _FORBIDDEN.search(path):
        raise PathRefused("control character in path")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise PathRefused("path climbs above the storage root")
            parts.pop()
            continue
        parts.append(segment)
    if not parts:
        raise PathRefused("path names the storage root")
    return "/".join(parts)
