"""What the attack tests (tests/test_attack_*.py) craft: tokens cut and respelled, media files whose
headers lie, and small probes of what a process does (answers compared whole, files created).

Only the token codec of the gateway is imported (it is the link format, which the telephony
platform implements too); everything else is made here from the formats themselves.
"""

from __future__ import annotations

import base64
import ctypes
import io
import os
import re
import select
import struct
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

from gateway.links.tokens import decrypt_token, encrypt_path
from support.http import Reply
from support.recordings import ffmpeg

__all__ = ["decrypt_token", "encrypt_path"]

BLOCK = 16

# -- tokens ----------------------------------------------------------------------------------


def token_bytes(token: str) -> bytes:
    """The AES blocks of a token (URL-safe base64, padding optional)."""
    body = token.rstrip("=")
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def token_of(sealed: bytes) -> str:
    """The canonical spelling of sealed bytes: URL-safe base64 without `=`."""
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def blocks(token: str) -> list[bytes]:
    sealed = token_bytes(token)
    assert len(sealed) % BLOCK == 0, token
    return [sealed[at : at + BLOCK] for at in range(0, len(sealed), BLOCK)]


def block_cuts(token: str) -> list[str]:
    """Every token made of a contiguous run of the token's blocks (the token itself included)."""
    parts = blocks(token)
    return [
        token_of(b"".join(parts[start:stop]))
        for start in range(len(parts))
        for stop in range(start + 1, len(parts) + 1)
    ]


def splice(*tokens_and_blocks: str | bytes) -> str:
    """A token made of whole tokens (str) and single blocks (bytes), in order."""
    sealed = b"".join(part if isinstance(part, bytes) else token_bytes(part) for part in tokens_and_blocks)
    return token_of(sealed)


def spellings(token: str) -> list[str]:
    """Every unpadded base64url spelling that decodes to the same bytes as `token`, canonical first.

    The last character of an unpadded token carries 2 (16-byte tokens) or 4 (32-byte tokens) data
    bits; decoders ignore the others, so 16 or 4 spellings open the same blocks.
    """
    canonical = token_of(token_bytes(token))
    data_bits = (len(token_bytes(token)) * 8) % 6 or 6
    unused = 6 - data_bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(canonical[-1])
    variants = [canonical[:-1] + alphabet[(last & ~((1 << unused) - 1)) | low] for low in range(1 << unused)]
    variants.remove(canonical)
    spelled = [canonical, *variants]
    assert all(token_bytes(spelling) == token_bytes(canonical) for spelling in spelled)
    return spelled


def padded(token: str) -> str:
    """The token with the `=` padding standard base64 would add."""
    return token + "=" * (-len(token) % 4)


_TOKENISH = re.compile(r"[A-Za-z0-9_-]{22,}")


def tokens_in(text: str) -> set[str]:
    """Every run of base64url characters long enough to be a token, anywhere in `text`."""
    return set(_TOKENISH.findall(text))


# -- answers ---------------------------------------------------------------------------------


def answer(reply: Reply) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """A reply as a client can compare it with another: status, body and headers but the Date."""
    headers = tuple(sorted((name.lower(), value) for name, value in reply.headers.items() if name.lower() != "date"))
    return reply.status, reply.body, headers


# -- media files -------------------------------------------------------------------------------


def pcm_wav(frames: bytes, rate: int = 8000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV holding `frames` as they are (length padded to whole frames)."""
    frames += bytes(-len(frames) % (2 * channels))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


def wav_frames(data: bytes) -> tuple[int, int, int, bytes]:
    """(channels, sample width, rate, frames) of a PCM WAV."""
    with wave.open(io.BytesIO(data)) as reader:
        return (
            reader.getnchannels(),
            reader.getsampwidth(),
            reader.getframerate(),
            reader.readframes(reader.getnframes()),
        )


def encode(target: Path, seconds: float, codec_args: list[str], rate: int = 8000) -> bytes:
    """A mono test tone encoded by ffmpeg; its bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate={rate}:duration={seconds}", "-ac", "1", *codec_args, str(target)],
        check=True,
    )  # fmt: skip
    return target.read_bytes()


def riff_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(id, offset of the chunk header, size) of each top-level chunk of a RIFF/WAVE file."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", "not a WAV"
    offset = 12
    while offset + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, offset)
        yield kind, offset, size
        offset += 8 + size + (size & 1)


def patch_wav(
    data: bytes,
    *,
    rate: int | None = None,
    byte_rate: int | None = None,
    channels: int | None = None,
    samples: int | None = None,
    data_size: int | None = None,
) -> bytes:
    """A WAV whose header says something else: fmt fields, the `fact` sample count, the data size."""
    out = bytearray(data)
    for kind, offset, _ in list(riff_chunks(data)):
        body = offset + 8
        if kind == b"fmt ":
            if channels is not None:
                struct.pack_into("<H", out, body + 2, channels)
            if rate is not None:
                struct.pack_into("<I", out, body + 4, rate)
            if byte_rate is not None:
                struct.pack_into("<I", out, body + 8, byte_rate & 0xFFFFFFFF)
        elif kind == b"fact" and samples is not None:
            struct.pack_into("<I", out, body, samples & 0xFFFFFFFF)
        elif kind == b"data" and data_size is not None:
            struct.pack_into("<I", out, offset + 4, data_size & 0xFFFFFFFF)
    return bytes(out)


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset, size) of every box on the path to the sample tables, depth first."""
    end = len(data) if end is None else end
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        assert size >= 8, f"unsupported box size {size} at {offset}"
        yield kind, offset, size
        if kind in _MP4_CONTAINERS:
            yield from mp4_boxes(data, offset + 8, offset + size)
        offset += size


def mov_claiming(data: bytes, seconds: int) -> bytes:
    """A MOV/MP4 whose one audio track claims `seconds` while holding the same few packets.

    Each sample-to-time entry is given a huge duration (stts delta), and the media, track, movie
    and edit durations are made to agree with it, so the container's own length is "borne out" by
    its last packet: a demuxer believes the track lasts `seconds`. Version-0 boxes only (what
    ffmpeg writes for short files).
    """
    out = bytearray(data)
    boxes = list(mp4_boxes(data))
    timescale = next(struct.unpack_from(">I", data, offset + 20)[0] for kind, offset, _ in boxes if kind == b"mdhd")
    movie_timescale = next(
        struct.unpack_from(">I", data, offset + 20)[0] for kind, offset, _ in boxes if kind == b"mvhd"
    )
    total = 0
    for kind, offset, _ in boxes:
        if kind == b"stts":
            entries = struct.unpack_from(">I", data, offset + 12)[0]
            count = sum(struct.unpack_from(">I", data, offset + 16 + 8 * n)[0] for n in range(entries))
            delta = -(-seconds * timescale // count)
            for n in range(entries):
                struct.pack_into(">I", out, offset + 16 + 8 * n + 4, delta)
            total = count * delta
    assert total, "no stts box"
    movie_total = total * movie_timescale // timescale
    for kind, offset, _ in boxes:
        assert kind not in (b"mvhd", b"tkhd", b"mdhd") or data[offset + 8] == 0, f"{kind!r} is not version 0"
        if kind == b"mdhd":
            struct.pack_into(">I", out, offset + 24, total)
        elif kind == b"mvhd":
            struct.pack_into(">I", out, offset + 24, movie_total)
        elif kind == b"tkhd":
            struct.pack_into(">I", out, offset + 28, movie_total)
        elif kind == b"elst":
            struct.pack_into(">I", out, offset + 16, movie_total)
    return bytes(out)


# -- files a process creates -------------------------------------------------------------------

_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


class Creations:
    """Names created (or renamed into) a directory tree while watched, with inotify.

    Directories are those present when the watch starts; a new subdirectory is itself a creation.
    """

    def __init__(self, root: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._dirs: dict[int, Path] = {}
        for folder, _, _ in os.walk(root):
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _IN_CREATE | _IN_MOVED_TO)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self._dirs[wd] = Path(folder)
        self.created: list[Path] = []

    def collect(self, wait: float = 0.0) -> list[Path]:
        """Everything created so far (waiting up to `wait` seconds for a first event)."""
        if wait:
            select.select([self._fd], [], [], wait)
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return self.created
            offset = 0
            while offset < len(data):
                wd, _, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                self.created.append(self._dirs.get(wd, Path("?")) / os.fsdecode(name))
                offset += 16 + length

    def close(self) -> None:
        os.close(self._fd)


def tree_bytes(root: Path) -> int:
    """Bytes in the regular files under `root` now (files vanishing meanwhile are skipped)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if not os.path.islink(os.path.join(folder, name)):
                total += info.st_size
    return total


def tree_files(root: Path) -> dict[Path, bytes]:
    """Every non-empty regular file under `root`, with its content."""
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size:
                found[path] = path.read_bytes()
    return found
