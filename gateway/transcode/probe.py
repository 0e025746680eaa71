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
import struct
from dataclasses import dataclass
from typing import Any

from .sniff import FLAC, MP3, OGG, OPUS, sniff

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


# WAV format tags read here without FFmpeg: the PCM family browsers play, and the telephony
# codecs the gateway converts, by FFmpeg's names. Any other tag goes to FFmpeg's demuxer.
_WAV_PCM_BITS = {8: "pcm_u8", 16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_s32le"}
_WAV_TAGS = {0x0002: "adpcm_ms", 0x0006: "pcm_alaw", 0x0007: "pcm_mulaw", 0x0011: "adpcm_ima_wav", 0x0031: "gsm_ms",
             0x0045: "adpcm_g726", 0x0064: "adpcm_g726"}  # fmt: skip
_EXTENSIBLE = 0xFFFE


def quick_probe(head: bytes, size: int | None = None) -> Probe | None:
    """What a WAV, MP3, FLAC or Ogg Opus/Vorbis head holds, read in Python; None to ask FFmpeg.

    These are what PBXs write, and their headers say it in a few bytes:
    reading them here needs no process and no FFmpeg (a click on a WAV
    waits for neither). Only answers that are certain: anything unusual is
    left to FFmpeg's demuxers, in their own process. `size` is the whole
    file's, for a WAV's duration.
    """
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav(head, size or len(head))
    found = sniff(head)
    if found in (MP3, FLAC):
        return Probe(found.format, found.format, False, None, False)
    if found is OPUS or (found is OGG and b"\x01vorbis" in head[:4096]):
        return Probe("ogg", "opus" if found is OPUS else "vorbis", False, None, False)
    return None


def _wav(head: bytes, file_size: int) -> Probe | None:
    """The codec, channels and duration of a WAV whose `fmt ` chunk and first audio bytes are in `head`."""
    codec, channels, byte_rate, total = None, 0, 0, file_size
    at = 12
    while at + 8 <= len(head):
        kind, size = head[at : at + 4], int.from_bytes(head[at + 4 : at + 8], "little")  # a chunk's
        if kind == b"fmt ":
            if size < 16 or at + 8 + 16 > len(head):
                return None
            tag, channels, rate, byte_rate = struct.unpack_from("<HHII", head, at + 8)
            bits = struct.unpack_from("<H", head, at + 22)[0]
            if tag == _EXTENSIBLE and size >= 40 and at + 8 + 26 <= len(head):
                tag = struct.unpack_from("<H", head, at + 8 + 24)[0]  # the sub-format GUID starts with the tag
            if not channels or not rate:
                return None
            codec = (
                _WAV_PCM_BITS.get(bits) if tag == 1 else "pcm_f32le" if (tag, bits) == (3, 32) else _WAV_TAGS.get(tag)
            )
            if codec is None:
                return None
        elif kind == b"data":
            # Audio must follow: a bare header, or a data chunk before its format, is FFmpeg's to judge.
            if not (codec and size and at + 8 < len(head)):
                return None
            duration = min(size, total - at - 8) / byte_rate if byte_rate else None  # the data the file holds
            return Probe("wav", codec, False, None, False, channels, duration)
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


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
