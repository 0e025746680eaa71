"""The conversions: pure functions run in the converter's worker processes.

`render()` reads a source file (a private copy the orchestrator made),
decodes its first audio stream with PyAV and writes one output file: a
16-bit PCM WAV, an MP3, an Opus stream in Ogg, or waveform peaks as JSON.
No HTTP, no cache, no metrics: what it found comes back as a `Rendered`,
what it could not read as `Undecodable`.

Outputs are deterministic (FFmpeg's bitexact flag, fixed encoder
settings), so a rendition made again after eviction has the same bytes,
as its ETag promises. Damaged packets are skipped and a recording cut short
is converted as far as it goes, as `ffmpeg` itself does.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import av

from .peaks import PeaksBuilder, dumps

# Call recordings are mono or stereo; more channels are mixed down to stereo.
MAX_CHANNELS = 2
_LAYOUTS = {1: "mono", 2: "stereo"}
_BITEXACT = {"fflags": "+bitexact"}
# The WAV demuxer's packet size (4096 bytes by default, fewer after its own
# per-packet duration cap): bigger packets mean far fewer trips through Python
# per minute of audio (G.726 decodes 1.5x, µ-law 10x faster). Other demuxers
# ignore it.
_INPUT_OPTIONS = {"max_size": "65536"}
_WRITE_BYTES = 1024 * 1024


class Undecodable(Exception):
    """The source holds no audio the gateway can decode; str() says why, for the client."""


@dataclass(frozen=True, slots=True)
class Rendered:
    codec: str  # the source's audio codec, FFmpeg's canonical name
    seconds: float  # duration of the audio decoded


@dataclass(frozen=True, slots=True)
class _Encoder:
    container: str
    codec: str
    bits_per_channel: tuple[int, int]  # below/above 24 kHz
    options: tuple[tuple[str, str], ...] = ()


# Speech-sized bit rates: 32 kbit/s per channel of narrowband MP3 and
# 24 kbit/s of Opus are transparent enough for calls. LAME's quality 7
# encodes about twice as fast as its default at these rates.
_ENCODERS = {
    "mp3": _Encoder("mp3", "libmp3lame", (32000, 64000), (("compression_level", "7"),)),
    "opus": _Encoder("ogg", "libopus", (24000, 48000)),
}


def render(source: str, target: str, kind: str, pixels: int = 0) -> Rendered:
    """Convert the first audio stream of `source` into `target`: kind "wav", "mp3", "opus" or "peaks"."""
    try:
        container = av.open(source, options=_INPUT_OPTIONS, metadata_errors="ignore")
    except (av.FFmpegError, ValueError, UnicodeDecodeError) as exc:
        raise Undecodable(f"not a recording the gateway can read ({_why(exc)})") from None
    with container:
        if not container.streams.audio:
            raise Undecodable("the file holds no audio")
        stream = container.streams.audio[0]
        context = stream.codec_context
        if context is None or context.codec is None:
            raise Undecodable("the gateway has no decoder for its audio")
        codec = context.codec.canonical_name
        rate, channels = context.sample_rate, min(context.layout.nb_channels or context.channels, MAX_CHANNELS)
        if rate <= 0 or channels <= 0:
            raise Undecodable(f"its {codec} audio has no sample rate or no channels")
        frames = _frames(container, stream)
        if kind == "wav":
            samples = _wav(frames, target, rate, channels)
        elif kind == "peaks":
            samples = _peaks(frames, target, rate, pixels, _estimated_samples(container, stream, rate))
        else:
            samples = _encode(frames, target, _ENCODERS[kind], rate, channels)
    if samples == 0:
        raise Undecodable(f"no {codec} audio could be decoded")
    return Rendered(codec, samples / rate)


def _frames(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[av.AudioFrame]:
    """Decoded frames; damaged packets skipped, a truncated file read as far as it goes."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError:
            break  # the rest cannot be read: keep what was decoded, then flush the decoder
        try:
            yield from packet.decode()
        except av.FFmpegError:
            continue
    try:
        yield from stream.codec_context.decode(None)
    except av.FFmpegError:
        return


def _resampled(frames: Iterator[av.AudioFrame], resampler: av.AudioResampler) -> Iterator[av.AudioFrame]:
    for frame in frames:
        try:
            yield from resampler.resample(frame)
        except ValueError:
            continue  # a frame whose format changed mid-stream: skipped
    yield from resampler.resample(None)


def _pcm(frame: av.AudioFrame, channels: int) -> memoryview:
    """The interleaved 16-bit samples of a packed s16 frame (its plane may be padded)."""
    return memoryview(frame.planes[0])[: frame.samples * channels * 2]


def _wav(frames: Iterator[av.AudioFrame], target: str, rate: int, channels: int) -> int:
    """16-bit PCM WAV; the standard library writes the RIFF header and patches its sizes."""
    resampler = av.AudioResampler(format="s16", layout=_LAYOUTS[channels], rate=rate)
    samples = 0
    pending: list[bytes] = []  # written in batches: a GSM frame is 320 samples, 15,000 in ten minutes
    size = 0
    with open(target, "wb") as sink, wave.open(sink, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        for frame in _resampled(frames, resampler):
            data = bytes(_pcm(frame, channels))
            pending.append(data)
            size += len(data)
            samples += frame.samples
            if size >= _WRITE_BYTES:
                out.writeframesraw(b"".join(pending))
                pending.clear()
                size = 0
        out.writeframesraw(b"".join(pending))
    return samples


def _encode(frames: Iterator[av.AudioFrame], target: str, encoder: _Encoder, rate: int, channels: int) -> int:
    rates = sorted(av.codec.Codec(encoder.codec, "w").audio_rates or (rate,))
    out_rate = next((supported for supported in rates if supported >= rate), rates[-1])
    samples = 0
    with av.open(target, "w", format=encoder.container, options=_BITEXACT) as output:
        stream = cast(av.AudioStream, output.add_stream(encoder.codec, rate=out_rate, layout=_LAYOUTS[channels]))
        stream.bit_rate = channels * encoder.bits_per_channel[out_rate > 24000]
        stream.codec_context.options = dict(encoder.options)
        stream.codec_context.open()
        resampler = av.AudioResampler(
            format=stream.codec_context.format,
            layout=_LAYOUTS[channels],
            rate=out_rate,
            frame_size=stream.codec_context.frame_size or None,
        )
        for frame in _resampled(frames, resampler):
            samples += frame.samples
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return samples * rate // out_rate


def _peaks(frames: Iterator[av.AudioFrame], target: str, rate: int, pixels: int, estimate: int | None) -> int:
    builder = PeaksBuilder(rate, pixels, estimate)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    for frame in _resampled(frames, resampler):
        builder.add(_pcm(frame, 1))
    with open(target, "wb") as sink:
        sink.write(dumps(builder.finish()))
    return builder.samples


def _estimated_samples(container: av.container.InputContainer, stream: av.AudioStream, rate: int) -> int | None:
    """The length the container declares, for the first guess of samples per pixel."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        return container.duration * rate // 1_000_000
    return None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__


# -- the worker processes ---------------------------------------------------


def worker_started() -> None:
    """Initializer of each pool process: the lowest CPU priority there is, deaf to Ctrl-C.

    SCHED_IDLE (Linux): the edge's processes preempt a conversion whenever
    they wake, so downloads keep their latency while conversions run; on a
    host saturated by downloads, conversions slow down rather than downloads.
    Elsewhere, the highest nice value.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _exit_with_parent(parent: int) -> None:
    """End this process when the edge worker that started it is gone.

    The pool's own shutdown needs the parent to run its exit handlers, which
    a worker ended by a signal (uvicorn re-raises SIGTERM once drained) or
    killed outright never does: without this, its converters would live on.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def warm() -> int:
    """A no-op that makes the pool start a process (PyAV imported) before a request needs it."""
    return os.getpid()
