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


# -- tones made and measured in pure Python (no numpy in the test extras) ------------------


def tone_wav(target: Path, tones: list[tuple[float, float]], seconds: float, rate: int = 8000) -> list[list[int]]:
    """A 16-bit PCM WAV with one channel per (frequency Hz, amplitude 0..1) tone; returns its samples."""
    import math
    import struct
    import wave

    count = int(seconds * rate)
    channels = [
        [int(32767 * level * math.sin(2 * math.pi * hz * n / rate)) for n in range(count)] for hz, level in tones
    ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = [sample for frame in zip(*channels) for sample in frame]
        out.writeframes(struct.pack(f"<{len(frames)}h", *frames))
    return channels


def decode_channels(data: bytes) -> tuple[int, list[list[int]]]:
    """(sample rate, samples per channel) of the first audio stream in `data`, decoded by PyAV as 16-bit."""
    import array
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="s16p", rate=rate)
        channels: list[array.array] = []
        for frame in container.decode(stream):
            for shaped in resampler.resample(frame):
                if not channels:
                    channels = [array.array("h") for _ in shaped.planes]
                for samples, plane in zip(channels, shaped.planes):
                    samples.frombytes(bytes(plane)[: shaped.samples * 2])
        return rate, [list(samples) for samples in channels]


def tone_power(samples: list[int], rate: int, hz: float) -> float:
    """Goertzel: the power of `samples` at `hz`, normalised so a full-scale sine there is about 1."""
    import math

    coefficient = 2 * math.cos(2 * math.pi * hz / rate)
    before = before_that = 0.0
    for sample in samples:
        before, before_that = sample / 32768 + coefficient * before - before_that, before
    power = before * before + before_that * before_that - coefficient * before * before_that
    return 4 * power / (len(samples) ** 2)


def zero_crossing_hz(samples: list[int], rate: int) -> float:
    """The frequency a pure tone has from its rising zero crossings."""
    rising = [n for n in range(1, len(samples)) if samples[n - 1] < 0 <= samples[n]]
    if len(rising) < 2:
        return 0.0
    return (len(rising) - 1) * rate / (rising[-1] - rising[0])


def rms(samples: list[int]) -> float:
    return (sum(sample * sample for sample in samples) / max(1, len(samples))) ** 0.5
