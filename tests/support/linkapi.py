"""The link API's test world: keys, bearer clients, recordings on disk, the settings that serve them.

Shared by the API in process (unit/test_api.py) and its commands as
processes (e2e/test_api_cli.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import wave
from pathlib import Path

K1 = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
K2 = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
PUBLIC = "https://storage.example.com"
CRM, ALL, OTHER = "crm-token-" + "a" * 30, "all-token-" + "b" * 30, "other-token-" + "c" * 30
MTIME = 1487329504  # 2017-02-17T11:05:04Z


def entry(client_id: str, bearer: str, prefix: str) -> str:
    return f"{client_id}:{hashlib.sha256(bearer.encode()).hexdigest()}:{prefix}"


CLIENTS = ",".join([entry("crm", CRM, "/300/"), entry("all", ALL, "/"), entry("other", OTHER, "/400/")])


def wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x01\x00" * 800)
    return buffer.getvalue()


MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(413)
FILES = {
    "/300/a.mp3": MP3,
    "/300/call.wav": wav_bytes(),
    "/300/renamed.mp3": wav_bytes(),  # a WAV under an .mp3 name
    "/300/unknown.mp3": b"this is not audio" * 10,
    "/300/sub/deep.mp3": MP3,
    "/300/звонок клиента.mp3": MP3,
    "/3000/sibling.mp3": MP3,
    "/400/other.mp3": MP3,
}


def settings_env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "GATEWAY_KEY": K1.hex(),
        "GATEWAY_STORAGE": root.as_uri(),
        "GATEWAY_PUBLIC_URL": PUBLIC + "/",
        "GATEWAY_API_CLIENTS": CLIENTS,
        **extra,
    }


def plant(tmp_path: Path) -> Path:
    """`tmp_path/recordings` holding FILES (mtime MTIME), and one file just outside it."""
    root = tmp_path / "recordings"
    for path, data in FILES.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (MTIME, MTIME))
    (tmp_path / "outside.mp3").write_bytes(MP3)
    return root
