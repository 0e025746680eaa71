"""The media type of a file, by the extension of its name, the same on every machine.

Shared by the edge (its Content-Type) and the link inspector (what it says
the edge sends), so the two never disagree.
"""

from __future__ import annotations

import mimetypes
import posixpath

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


def media_type(name: str) -> str:
    """The Content-Type for a file name, by its extension."""
    ext = posixpath.splitext(name)[1].lower()
    found = MEDIA_TYPES.get(ext) or _BUILTIN_TYPES.types_map[True].get(ext)
    if found is None:
        return DEFAULT_MEDIA_TYPE
    if found.startswith("text/"):
        return found + "; charset=utf-8"
    return found
