"""Which rendition of a recording: a format to convert to, waveform peaks, or the inline WAV.

The names that make up a rendition's identity (its cache key, its ETag and
its download name), and the refusal the rendition machinery answers with.
A rendition may also be of one channel alone, or have spans silenced (a
mask): both are part of its identity, so no link's view is ever served for
another's.
"""

from __future__ import annotations

import hashlib
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
# A recording with more channels than this is not one this gateway converts (see `convert`).
MAX_SOURCE_CHANNELS = 8
# Spans to silence, (start, end) in milliseconds, sorted and apart (`links.masks` makes them canonical).
Mask = tuple[tuple[int, int], ...]


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

    `explicit`: asked by ?format=, ?peaks=, ?channel= or a mask, so always
    converted. Otherwise it is the inline rendition, served only when
    browsers cannot play the original. `channel` (1-based): that channel
    alone, as mono; `split`: peaks with one series per channel; `mask`:
    spans made silent.
    """

    kind: str
    explicit: bool
    pixels: int = 0
    channel: int | None = None
    split: bool = False
    mask: Mask = ()

    @property
    def variant(self) -> str:
        """What distinguishes this rendition of a source from the others (cache key, ETag).

        `wav`, `peaks8-1000`, then `-c2` for channel 2, `-split`, and `-m`
        with a digest of the mask (128 bits: two masks never share a name).
        """
        name = f"{PEAKS}{PEAKS_BITS}-{self.pixels}" if self.kind == PEAKS else self.kind
        if self.channel is not None:
            name += f"-c{self.channel}"
        if self.split:
            name += "-split"
        if self.mask:
            spans = ",".join(f"{start}-{end}" for start, end in self.mask)
            name += "-m" + hashlib.sha256(spans.encode()).hexdigest()[:32]
        return name

    @property
    def extension(self) -> str:
        return PEAKS_EXTENSION if self.kind == PEAKS else FORMATS[self.kind]

    def rename(self, name: str) -> str:
        """`name` with its extension replaced by this rendition's (`call.wav` -> `call.mp3`).

        One channel is marked in the name: `call.wav` -> `call (channel 2).wav`.
        """
        return channel_name(name, self.channel, self.extension)


def channel_name(name: str, channel: int | None, extension: str | None = None) -> str:
    """`name` marked with `channel` before its extension (replaced by `extension` when given)."""
    stem, ext = posixpath.splitext(name)
    if not ext:
        stem = name
    if channel is not None:
        stem += f" (channel {channel})"
    return stem + (ext if extension is None else extension)
