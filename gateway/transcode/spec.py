"""Which rendition of a recording: a format to convert to, waveform peaks, or the inline WAV.

The names that make up a rendition's identity (its cache key, its ETag and
its download name), and the refusal the rendition machinery answers with.
"""

from __future__ import annotations

import posixpath
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


class Refused(Exception):
    """A rendition the gateway answers with `status` and `message` instead of a file.

    `reason` is the access log's label; `retry_after` (seconds) is sent with 503.
    """

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


# What a conversion answers (made in a pool process, unpickled in the edge's: defined here,
# with nothing heavy imported, so that an answer never loads PyAV into an edge worker).


class Undecodable(Exception):
    """The source holds no audio the gateway can decode; str() says why, for the client."""


class TooLong(Exception):
    """The conversion used up its CPU time; str() says how much, for the client."""


class TooLarge(Exception):
    """The rendition would be larger than `transcode.max_rendition_bytes`; str() says so, for the client."""


@dataclass(frozen=True, slots=True)
class Rendered:
    codec: str  # the source's audio codec, FFmpeg's canonical name
    seconds: float  # duration of the audio decoded


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
