"""What a link asks for: a format to convert to, waveform peaks, or playback.

Pure: the query parameters in, a `Wanted` (or nothing to convert) out. A
value that cannot be served is `Refused` with status 400 and a message that
names what is accepted.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

# ?format= value -> the extension the download gets. The inline rendition is "wav".
FORMATS = {"mp3": ".mp3", "opus": ".opus", "wav": ".wav"}
PEAKS = "peaks"
PEAKS_EXTENSION = ".json"
DEFAULT_PIXELS = 1000
MAX_PIXELS = 10000
# audiowaveform's 8-bit peaks: what peaks.js and wavesurfer.js load fastest, and plenty for a display.
PEAKS_BITS = 8
INLINE_FORMAT = "wav"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Refused(Exception):
    """A request the gateway answers with `status` and `message` instead of a file.

    `reason` is the access log's label; `retry_after` (seconds) is sent with 503.
    """

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Wanted:
    """A rendition to serve: `kind` is a key of FORMATS or PEAKS.

    `explicit`: asked by ?format= or ?peaks=, so always converted. Otherwise
    it is the inline rendition, served only when browsers cannot play the
    original.
    """

    kind: str
    explicit: bool
    pixels: int = 0

    @property
    def variant(self) -> str:
        """What distinguishes this rendition of a source from the others (cache key, ETag)."""
        return f"{PEAKS}{PEAKS_BITS}-{self.pixels}" if self.kind == PEAKS else self.kind

    @property
    def extension(self) -> str:
        return PEAKS_EXTENSION if self.kind == PEAKS else FORMATS[self.kind]

    def rename(self, name: str) -> str:
        """`name` with its extension replaced by this rendition's (`call.wav` -> `call.mp3`)."""
        stem, ext = posixpath.splitext(name)
        return (stem if ext else name) + self.extension


def wanted(params: Mapping[str, str], inline: bool, inline_renditions: bool) -> Wanted | None:
    """What to convert for these query parameters; None to serve the original as it is."""
    peaks = params.get(PEAKS)
    asked_peaks = False
    if peaks is not None:
        value = peaks.strip().lower()
        if value in _TRUE:
            asked_peaks = True
        elif value not in _FALSE:
            raise Refused(400, "peaks", f"peaks={peaks[:20]!r} is not understood: use peaks=1")
    fmt = params.get("format")
    if fmt is not None:
        if asked_peaks:
            raise Refused(400, "format", "format and peaks cannot be asked together")
        kind = fmt.strip().lower()
        if kind not in FORMATS:
            accepted = ", ".join(FORMATS)
            raise Refused(400, "format", f"unsupported format {fmt[:20]!r}; accepted: {accepted}")
        return Wanted(kind, explicit=True)
    if asked_peaks:
        return Wanted(PEAKS, explicit=True, pixels=_pixels(params.get("pixels")))
    if inline and inline_renditions:
        return Wanted(INLINE_FORMAT, explicit=False)
    return None


def _pixels(value: str | None) -> int:
    if value is None:
        return DEFAULT_PIXELS
    text = value.strip()
    # isdigit() alone admits "²"; the length bound keeps int() cheap.
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_PIXELS):
        raise Refused(400, "pixels", f"pixels must be a whole number from 1 to {MAX_PIXELS}")
    return int(text)
