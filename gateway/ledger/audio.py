"""From bytes sent to seconds of audio sent: the layout of a recording, and spans of it.

A listening session knows which byte spans of one representation (the
original file, or the gateway's PCM WAV rendition) were sent. To say how
many seconds of audio that was, it needs the representation's layout, read
from its first bytes:

- PCM WAV (the inline rendition, 16-bit PCM with a 44-byte header; or an
  original in PCM, float, µ-law or A-law): exact. The audio is the `data`
  chunk, one frame is `block_align` bytes, and a frame counts as sent only
  when all of its bytes were.
- Other WAV codecs (GSM 6.10, ADPCM, G.726, …): estimated from the average
  byte rate the header declares (or the sample count of its `fact` chunk).
- MP3: estimated from the frame count of a Xing/Info or VBRI header, or
  from the bitrate of the first frame (constant bitrate), and the file size.
- FLAC: estimated from STREAMINFO's sample count and the file size.
- Anything else (Ogg, MP4, WebM, whose duration is not at their start):
  unknown, so a session of it reports bytes but no seconds.

Everything here is pure: bytes in, numbers out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

HEAD_BYTES = 64 * 1024  # what is read of a representation to find its layout
Span = tuple[int, int]  # [start, stop) byte offsets

# WAVE format tags whose every frame is block_align bytes of samples: PCM, IEEE float, A-law, µ-law.
_FRAMED = frozenset({0x0001, 0x0003, 0x0006, 0x0007})
_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the audio of a file lies and how many bytes a second of it takes.

    `frame`: bytes per sample frame when `exact` (each frame maps to one
    sample instant); 1 for an estimate, where bytes map to time only on
    average.
    """

    start: int  # first byte of audio
    stop: int  # end of the audio (exclusive)
    bytes_per_second: float
    frame: int = 1
    exact: bool = False

    @property
    def duration(self) -> float:
        return (self.stop - self.start) / self.bytes_per_second

    def as_list(self) -> list[object]:
        return [self.start, self.stop, self.bytes_per_second, self.frame, self.exact]

    @classmethod
    def from_list(cls, items: Sequence[Any]) -> Layout:
        start, stop, rate, frame, exact = items
        return cls(int(start), int(stop), float(rate), int(frame), bool(exact))


@dataclass(frozen=True, slots=True)
class ReadAt:
    """The layout needs the bytes from `offset` on (an MP3 whose ID3 tag is longer than the head read)."""

    offset: int


def union(spans: Iterable[Span]) -> list[Span]:
    """Byte spans merged: overlapping and adjacent spans become one, empty ones vanish."""
    merged: list[list[int]] = []
    for start, stop in sorted(span for span in spans if span[1] > span[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def heard(spans: Iterable[Span], layout: Layout) -> tuple[float, list[tuple[float, float]]]:
    """Seconds of audio in `spans` (overlaps counted once), and those spans in seconds from the start."""
    total = 0.0
    seconds: list[tuple[float, float]] = []
    for start, stop in union(spans):
        first, last = max(start, layout.start) - layout.start, min(stop, layout.stop) - layout.start
        if last <= first:
            continue
        if layout.exact:
            frames_per_second = layout.bytes_per_second / layout.frame
            low, high = -(-first // layout.frame), last // layout.frame  # frames wholly sent
            if high <= low:
                continue
            span = (low / frames_per_second, high / frames_per_second)
        else:
            span = (first / layout.bytes_per_second, last / layout.bytes_per_second)
        total += span[1] - span[0]
        seconds.append(span)
    return total, seconds


def layout(head: bytes, size: int, offset: int = 0) -> Layout | ReadAt | None:
    """The layout of a file of `size` bytes whose bytes from `offset` on begin with `head`."""
    if offset:
        return _mp3(head, size, offset)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _wav(head, size)
    if head[:4] == b"fLaC":
        return _flac(head, size)
    if head[:3] == b"ID3" and len(head) >= 10:
        flags, raw = head[5], head[6:10]
        if any(byte & 0x80 for byte in raw):
            return None
        end = 10 + ((raw[0] << 21) | (raw[1] << 14) | (raw[2] << 7) | raw[3]) + (10 if flags & 0x10 else 0)
        if end >= size:
            return None
        return _mp3(head[end:], size, end) if end + 4 <= len(head) else ReadAt(end)
    return _mp3(head, size, 0)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def _wav(head: bytes, size: int) -> Layout | None:
    fmt: bytes | None = None
    samples = 0  # from a `fact` chunk: the sample count of a compressed WAV
    at = 12
    while at + 8 <= len(head):
        chunk, length = head[at : at + 4], _u32(head, at + 4)
        body = at + 8
        if chunk == b"fmt ":
            fmt = head[body : body + length]
        elif chunk == b"fact" and length >= 4:
            samples = _u32(head, body)
        elif chunk == b"data":
            if fmt is None or len(fmt) < 16:
                return None
            stop = body + length if 0 < length and body + length <= size else size
            return _wav_layout(fmt, samples, body, stop)
        at = body + length + (length & 1)
    return None


def _wav_layout(fmt: bytes, samples: int, start: int, stop: int) -> Layout | None:
    tag, rate, byte_rate, block = _u16(fmt, 0), _u32(fmt, 4), _u32(fmt, 8), _u16(fmt, 12)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = _u16(fmt, 24)  # the sub-format GUID starts with the format tag
    if tag in _FRAMED and rate and block:
        return Layout(start, stop, float(rate * block), block, exact=True)
    if samples and rate and stop > start:
        return Layout(start, stop, (stop - start) * rate / samples)
    if byte_rate:
        return Layout(start, stop, float(byte_rate))
    return None


def _flac(head: bytes, size: int) -> Layout | None:
    at, rate, total, last = 4, 0, 0, False
    while not last and at + 4 <= len(head):
        kind, length = head[at] & 0x7F, int.from_bytes(head[at + 1 : at + 4], "big")
        last = bool(head[at] & 0x80)
        if kind == 0 and length >= 18 and at + 4 + 18 <= len(head):
            bits = int.from_bytes(head[at + 14 : at + 22], "big")
            rate, total = bits >> 44, bits & ((1 << 36) - 1)
        at += 4 + length
    # Metadata past the head (a large picture) is taken as audio: an estimate either way.
    start = min(at, size)
    if not rate or not total or size <= start:
        return None
    return Layout(start, size, (size - start) * rate / total)


# MPEG audio frame headers: bitrates (kbit/s) by (MPEG-1?, layer) and index; sample rates by version.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class _Frame:
    mpeg1: bool
    layer: int
    bitrate: int  # bit/s
    rate: int
    mono: bool
    length: int  # bytes, header included

    @property
    def samples(self) -> int:
        return 384 if self.layer == 1 else 1152 if self.layer == 2 or self.mpeg1 else 576


def _frame(data: bytes, at: int) -> _Frame | None:
    if at + 4 > len(data) or data[at] != 0xFF or data[at + 1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (data[at + 1] >> 3) & 3, (data[at + 1] >> 1) & 3
    rate_index, bitrate_index = (data[at + 2] >> 2) & 3, data[at + 2] >> 4
    if version == 1 or layer_bits == 0 or rate_index == 3 or bitrate_index in (0, 15):
        return None
    mpeg1, layer = version == 3, 4 - layer_bits
    bitrate = _BITRATES[(mpeg1, layer)][bitrate_index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    padding = (data[at + 2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = (144 if layer == 2 or mpeg1 else 72) * bitrate // rate + padding
    return _Frame(mpeg1, layer, bitrate, rate, data[at + 3] >> 6 == 3, length)


def _mp3(data: bytes, size: int, offset: int) -> Layout | None:
    """MPEG audio whose bytes from `offset` on are `data`: the first frame must be at its start
    (after an ID3 tag) or be confirmed by the frame that follows it."""
    for at in range(min(len(data), 4096)):
        frame = _frame(data, at)
        if frame is None:
            continue
        following = at + frame.length
        if (at or offset == 0) and following + 4 <= len(data) and _frame(data, following) is None:
            continue  # a chance 0xFFE in other bytes
        if at and following + 4 > len(data):
            continue
        return _mp3_layout(data, size, offset + at, at, frame)
    return None


def _mp3_layout(data: bytes, size: int, start: int, at: int, frame: _Frame) -> Layout | None:
    if size <= start:
        return None
    frames = 0
    side = (32 if not frame.mono else 17) if frame.mpeg1 else (17 if not frame.mono else 9)
    xing = at + 4 + side
    if data[xing : xing + 4] in (b"Xing", b"Info") and int.from_bytes(data[xing + 4 : xing + 8], "big") & 1:
        frames = int.from_bytes(data[xing + 8 : xing + 12], "big")
    elif data[at + 36 : at + 40] == b"VBRI":
        frames = int.from_bytes(data[at + 50 : at + 54], "big")
    if frames:
        return Layout(start, size, (size - start) * frame.rate / (frames * frame.samples))
    return Layout(start, size, frame.bitrate / 8)
