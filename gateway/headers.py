"""Representation metadata for a stored file: type, disposition, validators.

Pure functions of a file's name, size and modification time, so they can be
memoised per file: at thousands of requests a second, rebuilding these for
each request is a visible share of the time.
"""

from __future__ import annotations

import mimetypes
import posixpath
from email.utils import formatdate
from urllib.parse import quote

# Recordings first: these win over the platform's tables, which differ
# between machines (and some lack wav altogether).
MEDIA_TYPES = {
    ".mp3": "audio/mpeg",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".flac": "audio/flac",
    ".amr": "audio/amr",
    ".gsm": "audio/x-gsm",
    ".au": "audio/basic",
    ".weba": "audio/webm",
    ".webm": "video/webm",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mkv": "video/x-matroska",
    ".mka": "audio/x-matroska",
    ".3gp": "video/3gpp",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"
# Python's built-in table only, never /etc/mime.types: same answer everywhere.
_BUILTIN_TYPES = mimetypes.MimeTypes()
# RFC 8187 attr-char: what may stand unescaped in filename*=UTF-8''…
_ATTR_SAFE = "!#$&+-.^_`|~"


def media_type(name: str) -> str:
    """The Content-Type for a file name, by its extension."""
    ext = posixpath.splitext(name)[1].lower()
    found = MEDIA_TYPES.get(ext) or _BUILTIN_TYPES.types_map[True].get(ext)
    if found is None:
        return DEFAULT_MEDIA_TYPE
    if found.startswith("text/"):
        return found + "; charset=utf-8"
    return found


def content_disposition(name: str, inline: bool) -> str:
    """RFC 6266 disposition with an ASCII fallback and a UTF-8 `filename*`.

    Old clients read `filename`, every current browser prefers `filename*`,
    so Cyrillic names survive while nothing breaks for the rest. Names with
    `%` get `filename*` too: some browsers percent-decode plain `filename`.
    """
    kind = "inline" if inline else "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name or "%" in name:
        value += f"; filename*=UTF-8''{quote(name, safe=_ATTR_SAFE)}"
    return value


def entity_tag(size: int, mtime: int) -> str:
    """nginx's strong ETag format, so offloading to nginx keeps validators."""
    return f'"{mtime:x}-{size:x}"'


def http_date(seconds: int) -> str:
    """IMF-fixdate, as Last-Modified requires."""
    return formatdate(seconds, usegmt=True)
