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

The PCM WAV is written so that it can be sent while it is made: its samples
are counted from the source's packets first (demuxing, no decoding: a few
milliseconds), the header declaring them goes out before any sample, and
exactly that many samples follow. The edge reads the size from that header
and streams the file as it grows (see `growing`). A source whose packets do
not all carry a duration gets its WAV written under another name and
renamed when complete, so nobody follows a file whose size is not known.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

import av

from .cache import PARTIAL_SUFFIX
from .peaks import PeaksBuilder, dumps
from .probe import PROBE_BYTES

# Call recordings are mono or stereo; more channels are mixed down to stereo.
MAX_CHANNELS = 2
_LAYOUTS = {1: "mono", 2: "stereo"}
_BITEXACT = {"fflags": "+bitexact"}
# The WAV demuxer's packet size (4096 bytes by default, fewer after its own
# per-packet duration cap): bigger packets mean far fewer trips through Python
# per minute of audio (G.726 decodes 1.5x, µ-law 10x faster). Other demuxers
# ignore it. `probesize`: opening reads (and decodes) this much to learn the
# streams, 5 MB by default, which made opening a ten-minute PCM WAV take
# 150 ms; the probe that decided to convert read no more than this either.
_INPUT_OPTIONS = {"max_size": "65536", "probesize": str(PROBE_BYTES)}
# Written (and flushed) in batches of this size: small enough that the first
# seconds of a streamed WAV reach the edge at once (256 KiB is 16 s of 8 kHz
# audio), large enough that a GSM frame (320 samples) is not a write each.
_WRITE_BYTES = 256 * 1024
# Codecs whose every packet decodes to exactly its duration: the telephony
# ones and PCM. MP3, AAC, Opus and Vorbis are not (encoder delay and padding
# are trimmed when decoding: counted from packets, an MP3 comes out a tenth
# of a second long); they are converted before they are sent.
_COUNTABLE_PREFIXES = ("pcm_", "adpcm_")
_COUNTABLE = frozenset({"gsm", "gsm_ms", "g722", "g723_1"})


class Undecodable(Exception):
    """The source holds no audio the gateway can decode; str() says why, for the client."""


class TooLong(Exception):
    """The conversion used up its CPU time; str() says how much, for the client."""


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


def render(source: str, target: str, kind: str, pixels: int = 0, cpu_seconds: float = 0.0) -> Rendered:
    """Convert the first audio stream of `source` into `target`: kind "wav", "mp3", "opus" or "peaks".

    `cpu_seconds` (0: no limit) bounds the CPU time of this call, so a
    recording of many hours, or a file built to be slow, cannot hold a
    conversion slot for ever: past it, TooLong. It is checked at every
    packet (a signal would be the obvious tool, but an exception raised by
    its handler inside PyAV's compiled code can be lost: seen here).
    """
    budget = _Budget(cpu_seconds)
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
        frames = _frames(container, stream, budget)
        if kind == "wav":
            samples = _wav(frames, target, rate, channels, _counted_samples(source, rate, codec, budget))
        elif kind == "peaks":
            samples = _peaks(frames, target, rate, pixels, _estimated_samples(container, stream, rate))
        else:
            samples = _encode(frames, target, _ENCODERS[kind], rate, channels)
    if samples == 0:
        raise Undecodable(f"no {codec} audio could be decoded")
    return Rendered(codec, samples / rate)


class _Budget:
    """CPU time this process may still use for the conversion (0 seconds: no limit)."""

    __slots__ = ("deadline", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.process_time() + seconds if seconds > 0 else math.inf

    def check(self) -> None:
        if time.process_time() > self.deadline:
            raise TooLong(f"it takes more than {self.seconds:g} CPU-seconds")


def _frames(container: av.container.InputContainer, stream: av.AudioStream, budget: _Budget) -> Iterator[av.AudioFrame]:
    """Decoded frames; damaged packets skipped, a truncated file read as far as it goes."""
    packets = container.demux(stream)
    while True:
        budget.check()
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


def _wav(frames: Iterator[av.AudioFrame], target: str, rate: int, channels: int, declared: int | None) -> int:
    """16-bit PCM WAV; the standard library writes the RIFF header.

    With `declared` samples, the header says so before the first sample and
    exactly that many are written: decoded samples past the count are
    dropped, and a count the decoder falls short of (a damaged last block)
    is made up with silence, so the size promised to clients holds. Returns
    the samples decoded.
    """
    resampler = av.AudioResampler(format="s16", layout=_LAYOUTS[channels], rate=rate)
    frame_bytes = 2 * channels
    decoded = written = 0
    pending: list[bytes] = []  # written in batches: a GSM frame is 320 samples, 15,000 in ten minutes
    size = 0
    with _output(target, visible=declared is not None) as sink, wave.open(sink, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        if declared is not None:
            out.setnframes(declared)
            out.writeframesraw(b"")  # the header alone, with the size, for the edge to read at once
            sink.flush()
        for frame in _resampled(frames, resampler):
            decoded += frame.samples
            data = _pcm(frame, channels)
            if declared is not None:
                data = data[: (declared - written) * frame_bytes]
            pending.append(bytes(data))
            size += len(data)
            written += len(data) // frame_bytes
            if size >= _WRITE_BYTES:
                out.writeframesraw(b"".join(pending))
                sink.flush()
                pending.clear()
                size = 0
            if declared is not None and written >= declared:
                break
        if declared is not None and written < declared:
            pending.append(bytes((declared - written) * frame_bytes))
        out.writeframesraw(b"".join(pending))
    return decoded


def _counted_samples(source: str, rate: int, codec: str, budget: _Budget) -> int | None:
    """How many samples the first audio stream holds, known before decoding any.

    The length the container declares is taken when the packets at its end
    bear it out (one seek: a whole recording); otherwise the packets are
    demuxed and their durations summed (a recording cut short, counted as
    far as it goes). None when only decoding can tell: a codec that primes
    its decoder (see `_COUNTABLE`), or a packet without a duration.
    """
    if not (codec.startswith(_COUNTABLE_PREFIXES) or codec in _COUNTABLE):
        return None
    for count in (_declared_and_borne_out, _summed_durations):
        with av.open(source, options=_INPUT_OPTIONS, metadata_errors="ignore") as container:
            stream = container.streams.audio[0]
            if stream.time_base is None:
                return None
            total = count(container, stream, budget)
            if total is not None:
                return int(total * stream.time_base * rate)
    return None


def _declared_and_borne_out(
    container: av.container.InputContainer, stream: av.AudioStream, budget: _Budget
) -> int | None:
    """The stream's declared duration, if its last packet ends exactly there (in `stream.time_base`)."""
    declared = stream.duration
    if not declared:
        return None
    end = None
    try:
        container.seek(max(0, declared - int(1 / stream.time_base)), stream=stream, any_frame=True)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None and packet.duration:
                end = packet.pts + packet.duration
    except av.FFmpegError:
        return None
    return declared if end == declared else None


def _summed_durations(container: av.container.InputContainer, stream: av.AudioStream, budget: _Budget) -> int | None:
    """The durations of every packet really there, summed (in `stream.time_base`)."""
    total = 0
    try:
        for packet in container.demux(stream):
            budget.check()
            if packet.size == 0:
                continue  # the end-of-stream marker
            if not packet.duration or packet.duration < 0:
                return None
            total += packet.duration
    except av.FFmpegError:
        pass  # unreadable past here: _frames stops at the same point
    return total


@contextlib.contextmanager
def _output(target: str, visible: bool) -> Iterator[BinaryIO]:
    """A new file for `target`: itself when it may be read while written, else renamed there when complete.

    Always a new inode (an earlier attempt is unlinked first, never
    truncated), so a reader still following a failed attempt never sees
    its bytes change under it.
    """
    path = target if visible else target + PARTIAL_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with open(path, "xb") as sink:
        yield sink
    if not visible:
        os.replace(path, target)


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
