"""Content sniffing: real files made here (WAV with the `wave` module, the rest as byte signatures)."""

from __future__ import annotations

import io
import os
import struct
import wave
from pathlib import Path

import pytest

from gateway.common.media import media_type
from gateway.transcode.sniff import (
    AAC,
    AMR,
    AMR_WB,
    FLAC,
    M4A,
    MATROSKA,
    MP3,
    MP4,
    OGG,
    OPUS,
    SNIFF_BYTES,
    THREE_GP,
    WAV,
    WEBM,
    Sniffed,
    mismatch,
    sniff,
)


def wav_bytes(seconds: float = 0.1, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x00\x01" * int(seconds * rate))
    return buffer.getvalue()


def ogg_page(body: bytes, sequence: int = 0, header_type: int = 2) -> bytes:
    """One Ogg page (CRC left zero: sniffing does not check it)."""
    segments = [255] * (len(body) // 255) + [len(body) % 255]
    return (
        b"OggS"
        + bytes([0, header_type])
        + struct.pack("<qIII", 0, 0x1234, sequence, 0)
        + bytes([len(segments)])
        + bytes(segments)
        + body
    )


OPUS_HEAD = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
VORBIS_HEAD = b"\x01vorbis" + struct.pack("<IBIiii", 0, 1, 8000, 0, 0, 0) + b"\xb8\x01"


def ftyp(brand: bytes, *compatible: bytes) -> bytes:
    payload = brand + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(payload)) + b"ftyp" + payload + b"\x00\x00\x00\x08free"


def ebml(doctype: bytes) -> bytes:
    # EBML header element with EBMLVersion and DocType children.
    children = b"\x42\x86\x81\x01" + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(children)]) + children + b"\x18\x53\x80\x67"


MP3_FRAME = bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(413)  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz
ID3_TAG = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10)
SAMPLES = {
    "wav": (wav_bytes(), WAV),
    "mp3-id3": (ID3_TAG + MP3_FRAME, MP3),
    "mp3-frame": (MP3_FRAME * 3, MP3),
    "mpeg2-layer3": (bytes([0xFF, 0xF3, 0x64, 0xC4]) + bytes(100), MP3),
    "aac-adts": (bytes([0xFF, 0xF1, 0x50, 0x80, 0x02, 0x1F, 0xFC]) + bytes(50), AAC),
    "ogg-vorbis": (ogg_page(VORBIS_HEAD), OGG),
    "ogg-opus": (ogg_page(OPUS_HEAD) + ogg_page(b"OpusTags" + bytes(20), 1, 0), OPUS),
    "flac": (b"fLaC\x80\x00\x00\x22" + bytes(34), FLAC),
    "m4a": (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), M4A),
    "mp4": (ftyp(b"isom", b"isom", b"iso2", b"mp41"), MP4),
    "3gp": (ftyp(b"3gp4", b"3gp4", b"isom"), THREE_GP),
    "webm": (ebml(b"webm"), WEBM),
    "mkv": (ebml(b"matroska"), MATROSKA),
    "amr": (b"#!AMR\n" + bytes([0x3C]) + bytes(31), AMR),
    "amr-wb": (b"#!AMR-WB\n" + bytes(33), AMR_WB),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_signature_is_recognised(name):
    data, expected = SAMPLES[name]
    assert sniff(data) == expected
    assert sniff(data[:SNIFF_BYTES]) == expected


@pytest.mark.parametrize("name", list(SAMPLES))
def test_files_on_disk_are_recognised_from_their_first_bytes(tmp_path, name):
    data, expected = SAMPLES[name]
    target = tmp_path / f"recording-{name}"
    target.write_bytes(data + os.urandom(10_000))  # the tail must not matter
    with target.open("rb") as handle:
        assert sniff(handle.read(SNIFF_BYTES)) == expected


def test_a_wav_renamed_mp3_is_a_mismatch():
    found = sniff(wav_bytes())
    assert found == WAV and found.media_type == "audio/wav"
    assert mismatch("/300/call.mp3", found) is True
    assert mismatch("/300/call.wav", found) is False
    assert mismatch("/300/CALL.WAV", found) is False  # extensions compare case-insensitively


@pytest.mark.parametrize(
    ("name", "ok", "wrong"),
    [
        ("mp3-id3", "x.mp3", "x.wav"),
        ("ogg-vorbis", "x.ogg", "x.opus"),  # a Vorbis stream called .opus will not play as Opus
        ("ogg-opus", "x.opus", "x.mp3"),
        ("ogg-opus", "x.ogg", "x.flac"),  # Opus in Ogg is fine as .ogg
        ("flac", "x.flac", "x.ogg"),
        ("m4a", "x.m4a", "x.mp3"),
        ("m4a", "x.mp4", "x.webm"),  # the same ISO container: not a mismatch
        ("mp4", "x.mp4", "x.mkv"),
        ("webm", "x.webm", "x.mp4"),
        ("webm", "x.mkv", "x.ogg"),  # WebM is a Matroska subset
        ("mkv", "x.mkv", "x.webm"),  # but general Matroska is not WebM
        ("amr", "x.amr", "x.mp3"),
        ("aac-adts", "x.aac", "x.m4a"),
    ],
)
def test_mismatch_against_the_extension(name, ok, wrong):
    found = sniff(SAMPLES[name][0])
    assert mismatch(ok, found) is False
    assert mismatch(wrong, found) is True


def test_opus_head_only_counts_in_the_first_page():
    data = ogg_page(VORBIS_HEAD) + ogg_page(OPUS_HEAD, 1, 0)
    assert sniff(data) == OGG


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFF",
        b"RIFF\x24\x00\x00\x00AVI LIST",  # RIFF but not WAVE
        b"\xff",
        bytes([0xFF, 0xE9, 0x00]),  # sync, reserved version bits
        bytes([0xFF, 0xE1, 0x00]),  # sync, layer 00 without the 12th ADTS sync bit
        b"OggS"[:3],
        b"not a recording at all",
        b"\x00\x00\x00\x18ftp" + bytes(20),
        b"<html><body>404</body></html>",
    ],
)
def test_unknown_or_truncated_content_is_not_guessed(data):
    assert sniff(data) is None
    assert mismatch("x.mp3", sniff(data)) is None


def test_random_bytes_are_rarely_anything(tmp_path):
    # Not a property of the sniffer so much as of the signatures: random data almost never matches.
    hits = [found for found in (sniff(os.urandom(64)) for _ in range(500)) if found is not None]
    assert len(hits) < 25
    assert all(found in (MP3, AAC) for found in hits)  # only the 11/12-bit frame syncs are that short


@pytest.mark.parametrize(
    ("kind", "extension"),
    [
        (WAV, ".wav"),
        (MP3, ".mp3"),
        (AAC, ".aac"),
        (OGG, ".ogg"),
        (OPUS, ".opus"),
        (FLAC, ".flac"),
        (M4A, ".m4a"),
        (MP4, ".mp4"),
        (THREE_GP, ".3gp"),
        (WEBM, ".webm"),
        (MATROSKA, ".mkv"),
        (AMR, ".amr"),
    ],
)
def test_sniffed_types_agree_with_what_the_edge_sends_for_the_usual_extension(kind: Sniffed, extension: str):
    assert kind.matches("x" + extension)
    assert media_type("x" + extension) == kind.media_type


def test_the_sniff_window_holds_a_whole_first_ogg_page():
    # An Ogg page carries at most 255 segments of 255 bytes after a 27+255 byte header.
    assert SNIFF_BYTES >= 27 + 255 + 8
    big_first_page = ogg_page(OPUS_HEAD + bytes(2000))
    assert sniff(big_first_page[:SNIFF_BYTES]) == OPUS


def test_a_real_wave_file_from_disk(tmp_path: Path):
    target = tmp_path / "a.mp3"
    with wave.open(str(target), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(44100)
        out.writeframes(os.urandom(44100))
    found = sniff(target.read_bytes()[:SNIFF_BYTES])
    assert found == WAV
    assert mismatch(target.name, found) is True
