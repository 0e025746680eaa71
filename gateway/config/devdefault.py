"""The embedded development default: a sample folder, a local key, a working link.

Used only when neither a key nor a storage is configured, so that a
newcomer's first `storage-gateway serve` answers a real link at once.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
import wave
from pathlib import Path

from ..links.tokens import KEY_BYTES, parse_key

SAMPLE_PATHS = ("/300/2017-02-17-11-05-04_in_300_sample.wav", "/300/звонок-клиента.wav")
_RATE = 8000


def prepare(directory: Path) -> tuple[bytes, Path]:
    """Create (once) the key file and sample recordings; return key and root."""
    root = directory / "recordings"
    root.mkdir(parents=True, exist_ok=True)
    key_file = directory / "dev.key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES).hex() + "\n")
    for path in SAMPLE_PATHS:
        target = root / path.lstrip("/")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_call_tone(target, seconds=6)
    return parse_key(key_file.read_text()), root


def _write_call_tone(target: Path, seconds: int) -> None:
    """A telephone-like recording: ringback tone bursts, 8 kHz 16-bit mono PCM."""
    frames = bytearray()
    for n in range(seconds * _RATE):
        t = n / _RATE
        ringing = (t % 3.0) < 1.0
        value = 0.3 * (math.sin(2 * math.pi * 440 * t) + math.sin(2 * math.pi * 480 * t)) if ringing else 0.0
        frames += struct.pack("<h", int(value * 16000))
    tmp = target.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(_RATE)
        out.writeframes(bytes(frames))
    tmp.replace(target)
