"""What a recording really is, from its first bytes (magic numbers).

The edge names the type from the file's extension (what nginx does, and what
browsers get); this module reads the content instead, so that the link API
can report a file whose name lies about it — a WAV renamed `.mp3` plays in
no browser that trusts the `Content-Type`.

Pure: give it the first `SNIFF_BYTES` of a file (fewer for a short file).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

# Enough for the first Ogg page (where OpusHead lives) and an EBML header's DocType.
SNIFF_BYTES = 4096

_ISO_BMFF = frozenset({".mp4", ".m4a", ".m4b", ".m4v", ".m4p", ".3gp", ".3g2", ".mov"})


@dataclass(frozen=True)
class Sniffed:
    """A recognised format: its short name, its usual media type, and the extensions it may carry."""

    format: str
    media_type: str
    extensions: frozenset[str]

    def matches(self, name: str) -> bool:
        """Whether a file called `name` may hold this content without misleading a player."""
        return posixpath.splitext(name)[1].lower() in self.extensions


def _kind(format: str, media_type: str, *extensions: str) -> Sniffed:
    return Sniffed(format, media_type, frozenset(extensions))


WAV = _kind("wav", "audio/wav", ".wav", ".wave")
MP3 = _kind("mp3", "audio/mpeg", ".mp3", ".mpga", ".mp2")
AAC = _kind("aac", "audio/aac", ".aac")
OGG = _kind("ogg", "audio/ogg", ".ogg", ".oga", ".ogv")
OPUS = _kind("opus", "audio/ogg", ".opus", ".ogg", ".oga")
FLAC = _kind("flac", "audio/flac", ".flac")
M4A = Sniffed("m4a", "audio/mp4", _ISO_BMFF)
MP4 = Sniffed("mp4", "video/mp4", _ISO_BMFF)
THREE_GP = Sniffed("3gp", "video/3gpp", _ISO_BMFF)
WEBM = _kind("webm", "video/webm", ".webm", ".weba", ".mkv", ".mka")
MATROSKA = _kind("matroska", "video/x-matroska", ".mkv", ".mka")
AMR = _kind("amr", "audio/amr", ".amr")
AMR_WB = _kind("amr-wb", "audio/amr-wb", ".awb", ".amr")


def sniff(head: bytes) -> Sniffed | None:
    """The format of a file starting with `head`, or None when no signature matches."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head.startswith(b"fLaC"):
        return FLAC
    if head.startswith(b"OggS"):
        return OPUS if b"OpusHead" in _first_ogg_page(head) else OGG
    if head.startswith(b"#!AMR-WB\n"):
        return AMR_WB
    if head.startswith(b"#!AMR\n"):
        return AMR
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # The EBML header names its DocType near the start: "webm" or "matroska".
        return WEBM if b"webm" in head[:64] else MATROSKA
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return M4A
        if brand.startswith(b"3g"):
            return THREE_GP
        return MP4
    if head.startswith(b"ID3"):
        return MP3
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # 11 sync bits. Layer bits 00 are reserved in MPEG audio, and are
        # exactly what ADTS (raw AAC) carries after its 12-bit sync.
        if head[1] & 0x06 == 0:
            return AAC if head[1] & 0xF0 == 0xF0 else None
        if head[1] & 0x18 == 0x08:
            return None  # MPEG version bits 01 are reserved
        return MP3
    return None


def _first_ogg_page(head: bytes) -> bytes:
    """The first Ogg page (header and body) as far as `head` holds it."""
    if len(head) < 27:
        return head
    segments = head[26]
    body = 27 + segments
    return head[: body + sum(head[27:body])]


def mismatch(name: str, found: Sniffed | None) -> bool | None:
    """Whether the extension of `name` misrepresents content sniffed as `found` (None: unknown content)."""
    if found is None:
        return None
    return not found.matches(name)
