"""Recordings made by the tests themselves with ffmpeg (never downloaded)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# A telephone-like test signal: a tone sweeping in pitch, so a seek lands on audibly different audio.
_SOURCE = "sine=frequency=440:sample_rate={rate}:duration={seconds}"


def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed: run tests/run, which installs Debian's ffmpeg")
    return path


def make_audio(target: Path, seconds: float, codec_args: list[str], rate: int = 8000) -> Path:
    """Encode `seconds` of mono test tone with the given ffmpeg codec arguments.

    Examples: ["-c:a", "pcm_s16le"] (.wav), ["-c:a", "gsm_ms"] (.wav, Asterisk's wav49),
    ["-c:a", "adpcm_g726", "-b:a", "32k"], ["-c:a", "adpcm_ima_wav"], ["-c:a", "pcm_mulaw"],
    ["-c:a", "libmp3lame", "-b:a", "32k"] (.mp3), ["-c:a", "libopus"] (.opus/.ogg, rate 48000).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         _SOURCE.format(rate=rate, seconds=seconds), "-ac", "1", *codec_args, str(target)],
        check=True,
    )  # fmt: skip
    return target


def make_video(target: Path, seconds: float, codec_args: list[str]) -> Path:
    """A small test-pattern video with a tone, e.g. ["-c:v", "libvpx", "-c:a", "libopus"] for .webm."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [ffmpeg(), "-nostdin", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc=size=160x120:rate=10:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-shortest", *codec_args, str(target)],
        check=True,
    )  # fmt: skip
    return target
