#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of probing and converting recordings whose container headers lie.

    python tests/fuzz/fuzz_media.py -max_total_time=600     # ten minutes
    python tests/fuzz/fuzz_media.py -runs=400 -seed=1       # a fixed amount (what the suite runs)

Whoever can write the storage tree can put any bytes there. Each input takes
one real, small recording (PCM, GSM 6.10, IMA ADPCM and G.726 in WAV, IMA
ADPCM in MOV, MP3: made with ffmpeg once, at start), overwrites a few of its
first 512 bytes (the headers: sizes, rates, channels, durations, sample
tables) with fuzzed values, and runs the gateway's own `probe` and `render`
on it, in process, with a small CPU budget and size bound. What must hold:

- probing answers a `Probe`, whatever the bytes;
- converting either finishes or refuses with Undecodable, TooLong or
  TooLarge (or an error FFmpeg or PyAV reports as such: FFmpegError,
  ValueError, OverflowError, which the gateway answers 415); anything else
  (TypeError, IndexError, KeyError, struct.error, …) is a bug of ours;
- no output is larger than the bound, and a WAV's header declares exactly
  the size the file has (a player trusts it while the file is streamed).

A crash inside FFmpeg kills this process: libFuzzer then writes the input as
`crash-<sha1>` (in production it would cost a pool process, not a worker).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports():
    from gateway.transcode.convert import render
    from gateway.transcode.probe import Probe, probe
    from gateway.transcode.spec import TooLarge, TooLong, Undecodable

import av

MAX_BYTES = 4 * 1024 * 1024
CPU_SECONDS = 2.0
HEAD = 512
KINDS = ("wav", "mp3", "peaks")
# Errors FFmpeg and PyAV raise for bytes they refuse: the gateway answers them 415.
REPORTED = (Undecodable, TooLong, TooLarge, av.FFmpegError, ValueError, OverflowError, EOFError)
_WORK = Path(tempfile.mkdtemp(prefix="fuzz-media-"))


def _seeds() -> list[bytes]:
    """One small recording per container and codec the gateway meets."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is needed to make the seed recordings (tests/run installs it)")
    made = []
    pcm = _WORK / "pcm.wav"
    with wave.open(str(pcm), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", (n * 37) % 2000 - 1000) for n in range(4000)))
    made.append(pcm.read_bytes())
    for name, args in (
        ("gsm.wav", ["-c:a", "gsm_ms"]),
        ("ima.wav", ["-c:a", "adpcm_ima_wav"]),
        ("g726.wav", ["-c:a", "adpcm_g726", "-b:a", "32k"]),
        ("ima.mov", ["-c:a", "adpcm_ima_qt"]),
        ("call.mp3", ["-c:a", "libmp3lame", "-b:a", "32k"]),
    ):
        target = _WORK / name
        subprocess.run(
            [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
             "sine=frequency=440:sample_rate=8000:duration=0.5", "-ac", "1", *args, str(target)],
            check=True,
        )  # fmt: skip
        made.append(target.read_bytes())
    return made


SEEDS = _seeds()


def _mutated(fdp: atheris.FuzzedDataProvider) -> bytes:
    data = bytearray(SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)])
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        at = fdp.ConsumeIntInRange(0, min(HEAD, len(data)) - 1)
        patch = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8))
        data[at : at + len(patch)] = patch
    if fdp.ConsumeBool():
        del data[fdp.ConsumeIntInRange(HEAD // 2, len(data)) :]  # cut short, like a broken upload
    return bytes(data)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    source = _mutated(fdp)
    kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
    found = probe(source[: 256 * 1024], True)
    assert isinstance(found, Probe), found
    path, target = _WORK / "source", _WORK / "target"
    path.write_bytes(source)
    for leftover in (target, Path(f"{target}.part")):
        leftover.unlink(missing_ok=True)
    try:
        render(str(path), str(target), kind, 100, CPU_SECONDS, MAX_BYTES)
    except REPORTED:
        return
    size = target.stat().st_size
    assert size <= MAX_BYTES + 44, size
    if kind == "wav":
        with target.open("rb") as out:
            head = out.read(12)
        assert head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size, (head, size)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
