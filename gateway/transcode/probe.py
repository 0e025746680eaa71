"""Which container and audio codec a recording really holds, and whether browsers play it.

Decided from what PyAV (FFmpeg) finds in the bytes, never from the file's
name: a GSM 6.10 WAV is a `.wav` like a PCM one, and only one of them plays.
Probing reads the head of the file only (`PROBE_BYTES`), which is where
every format recordings come in (WAV, MP3, Ogg, FLAC, AMR, …) says what it
holds. It runs in a process of its own (see `pool`), so that a demuxer
crash on a crafted file costs that process and not an edge worker, and
never in the conversion pool, so a busy pool cannot delay playback of
files that need no conversion.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

PROBE_BYTES = 256 * 1024

# (container as FFmpeg names it, codec) pairs that Chromium, Firefox and
# Safari play. Only these are served as they are to inline links; anything
# else that holds audio gets the PCM WAV rendition. PCM in WAV means the
# sample formats browsers' WAV support covers (µ-law and A-law included);
# the rare others are converted, which is cheap.
PLAYABLE: dict[str, frozenset[str]] = {
    "wav": frozenset({"pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"}),
    "mp3": frozenset({"mp3"}),
    "ogg": frozenset({"opus", "vorbis", "flac"}),
    "flac": frozenset({"flac"}),
    "aac": frozenset({"aac"}),
    "mov,mp4,m4a,3gp,3g2,mj2": frozenset({"aac", "mp3", "opus", "flac"}),
    "matroska,webm": frozenset({"opus", "vorbis"}),
}


@dataclass(frozen=True, slots=True)
class Probe:
    """What the head of a file holds.

    `codec`: the canonical FFmpeg name of its first audio stream (None: no
    audio found). `problem`: why it is not audio the gateway can read.
    `complete`: the whole file was probed, so a problem is final (otherwise
    the head alone may not tell, e.g. an MP4 whose index is at the end).
    `channels`: of that stream (0: not known); `duration`: seconds, as the
    container declares it (None: only decoding can tell, an Ogg file say).
    """

    container: str | None
    codec: str | None
    video: bool
    problem: str | None
    complete: bool
    channels: int = 0
    duration: float | None = None

    @property
    def audio(self) -> bool:
        return self.codec is not None and self.problem is None

    @property
    def playable(self) -> bool:
        """Whether browsers play the file as it is."""
        return self.audio and self.codec in PLAYABLE.get(self.container or "", ())

    def lacking(self, channel: int | None) -> str | None:
        """Why channel `channel` (1-based) cannot be had of this recording, or None (it can, or it is not known)."""
        if channel is None or not self.audio or not self.channels or channel <= self.channels:
            return None
        return f"the recording has {self.channels} channel" + ("" if self.channels == 1 else "s")


class _Head(io.BytesIO):
    """The first bytes of a file that says it is `size` bytes long (reads past the head find its end).

    FFmpeg works a duration out from the file's size for some formats (a PCM
    WAV, an MP3 without a Xing header): the head alone would make it short.
    """

    def __init__(self, head: bytes, size: int) -> None:
        super().__init__(head)
        self.size = max(size, len(head))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            return super().seek(self.size + offset)
        return super().seek(offset, whence)


def probe(head: bytes, complete: bool, size: int | None = None) -> Probe:
    """Probe the first bytes of a file (`complete`: they are the whole file; `size`: the whole file's)."""
    import av  # here: the edge imports PyAV only once it has something to probe

    try:
        container = av.open(_Head(head, size or len(head)), metadata_errors="ignore")
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        return Probe(None, None, False, f"not a recording the gateway can read ({_why(exc)})", complete)
    with container:
        video = bool(container.streams.video)
        name = container.format.name
        if not container.streams.audio:
            return Probe(name, None, video, "the file holds no audio", complete)
        stream = container.streams.audio[0]
        context = stream.codec_context
        if context is None or context.codec is None:
            return Probe(name, None, video, "no decoder for its audio", complete)
        channels = context.layout.nb_channels or context.channels
        return Probe(name, context.codec.canonical_name, video, None, complete, channels, _duration(container, stream))


def _duration(container: Any, stream: Any) -> float | None:
    """Seconds the container or the stream declares, if any."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration else None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
