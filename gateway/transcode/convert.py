"""The conversions: pure functions run in the converter's worker processes.

`render()` reads a source file (a private copy the orchestrator made),
decodes its first audio stream with PyAV and writes one output file: a
16-bit PCM WAV, an MP3, an Opus stream in Ogg, or waveform peaks as JSON
(one series, or one per channel). Any of them may be of one channel
alone, and may have spans silenced (a mask): both are done on the decoded
samples at the source's rate and layout, before any resampling, mixing or
encoding, so nothing of a masked span's audio reaches any output.
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
import re
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

import av

from .cache import PARTIAL_SUFFIX, open_new
from .peaks import PeaksBuilder, dumps, interleaved
from .probe import PROBE_BYTES
from .spec import MAX_SOURCE_CHANNELS, Mask, Rendered, TooLarge, TooLong, Undecodable

# Call recordings are mono or stereo; more channels are mixed down to stereo, and a file
# claiming more than 8, or a rate no recording has, is not one this gateway converts (a
# WAV header's byte rate overflows, resamplers refuse odd layouts).
MAX_CHANNELS = 2
RATES = (1000, 384_000)
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
_WAV_HEADER_BYTES = 44
# Codecs whose every packet decodes to exactly its duration: the telephony
# ones and PCM. MP3, AAC, Opus and Vorbis are not (encoder delay and padding
# are trimmed when decoding: counted from packets, an MP3 comes out a tenth
# of a second long); they are converted before they are sent.
_COUNTABLE_PREFIXES = ("pcm_", "adpcm_")
_COUNTABLE = frozenset({"gsm", "gsm_ms", "g722", "g723_1"})


# The most samples (per channel) one byte of each codec can decode to: a length a container
# declares beyond what its bytes can hold is a lie (a crafted timing table), not a count.
# PCM is worked out from its sample size. G.726 at 16 kbit/s is 2 bits a sample; GSM 6.10
# 160 samples in 33 bytes; G.723.1 240 in 20; the ADPCM family 4 bits.
_SAMPLES_PER_BYTE = {"adpcm_g726": 4.0, "adpcm_g726le": 4.0, "gsm": 160 / 33, "gsm_ms": 320 / 65, "g723_1": 12.0}
_DEFAULT_SAMPLES_PER_BYTE = 2.0


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


def render(
    source: str, target: str, kind: str, pixels: int = 0, cpu_seconds: float = 0.0, max_bytes: int = 2**32 - 2**16,
    channel: int | None = None, mask: Mask = (), split: bool = False,
) -> Rendered:  # fmt: skip
    """Convert the first audio stream of `source` into `target`: kind "wav", "mp3", "opus" or "peaks".

    `channel` (1-based): that channel alone, as mono. `mask`: (start, end)
    milliseconds made silent, the duration kept. `split`: peaks with one
    series per channel.

    `cpu_seconds` (0: no limit) bounds the CPU time of this call, so a
    recording of many hours, or a file built to be slow, cannot hold a
    conversion slot for ever: past it, TooLong. It is checked at every
    packet (a signal would be the obvious tool, but an exception raised by
    its handler inside PyAV's compiled code can be lost: seen here).
    `max_bytes` bounds the output: past it, TooLarge, before it is written
    when its size is known first.
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
        rate, source_channels = context.sample_rate, context.layout.nb_channels or context.channels
        if not RATES[0] <= rate <= RATES[1] or not 1 <= source_channels <= MAX_SOURCE_CHANNELS:
            raise Undecodable(
                f"its {codec} audio claims {source_channels} channels at {rate} Hz, which no recording has"
            )
        channels = min(source_channels, MAX_CHANNELS)
        if channel is not None:
            if channel > source_channels:
                raise Undecodable(f"the recording has {source_channels} channels: there is no channel {channel}")
            channels = 1
        frames = _frames(container, stream, budget)
        if channel is not None or mask or split:
            frames = _shaped(frames, rate, channel, mask)
        sink = _Bounded(max_bytes)
        if kind == "wav":
            declared = _counted_samples(source, rate, codec, budget)
            if declared is not None and declared > _most_samples(codec, source, source_channels):
                declared = None  # the container's length is a lie: decode, and declare what was decoded
            samples = _wav(frames, target, rate, channels, declared, sink)
        elif kind == "peaks" and split:
            samples = _split_peaks(frames, target, rate, pixels, _estimated_samples(container, stream, rate))
        elif kind == "peaks":
            samples = _peaks(frames, target, rate, pixels, _estimated_samples(container, stream, rate))
        else:
            samples = _encode(frames, target, _ENCODERS[kind], rate, channels, sink)
    if samples == 0:
        raise Undecodable(f"no {codec} audio could be decoded")
    return Rendered(codec, samples / rate)


def _most_samples(codec: str, source: str, channels: int) -> int:
    """How many samples per channel the source's bytes can hold at most, for its codec."""
    if codec.startswith("pcm_"):
        bits = re.search(r"\d+", codec)  # pcm_s16le: 16 bits; pcm_mulaw, pcm_alaw: 8
        per_byte = 8 / int(bits[0]) if bits else 1.0
    else:
        per_byte = _SAMPLES_PER_BYTE.get(codec, _DEFAULT_SAMPLES_PER_BYTE)
    return int(os.path.getsize(source) * per_byte / channels) + 4096  # a codec frame's worth of slack


class _Bounded:
    """Counts the bytes an output gets; TooLarge past `limit`."""

    __slots__ = ("limit", "written")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0

    def add(self, count: int) -> None:
        self.written += count
        if self.written > self.limit:
            raise TooLarge(f"its rendition would be larger than {self.limit} bytes")


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


def _shaped(frames: Iterator[av.AudioFrame], rate: int, channel: int | None, mask: Mask) -> Iterator[av.AudioFrame]:
    """Decoded frames as 16-bit planar samples at the source's rate and layout, masked spans silent.

    With `channel`, only that channel (1-based), as mono. Nothing is mixed
    or resampled here, so a sample is silenced exactly where it is, and
    whatever comes after (mixing, resampling, encoding, peaks) only ever
    sees the masked samples.
    """
    spans = [(start * rate // 1000, -(-end * rate // 1000)) for start, end in mask]  # outward to whole samples
    resampler = av.AudioResampler(format="s16p", rate=rate)  # the source's layout, whatever it is
    position = 0
    for frame in _resampled(frames, resampler):
        count = frame.samples
        planes = [bytearray(memoryview(plane)[: count * 2]) for plane in frame.planes]
        if channel is not None:
            planes = planes[channel - 1 : channel]
        for start, end in spans:
            if start < position + count and end > position:
                first, last = max(start, position) - position, min(end, position + count) - position
                for plane in planes:
                    plane[2 * first : 2 * last] = bytes(2 * (last - first))
        position += count
        shaped = av.AudioFrame(format="s16p", layout="mono" if channel is not None else frame.layout, samples=count)
        for plane, data in zip(shaped.planes, planes):
            plane.update(bytes(data) + bytes(plane.buffer_size - len(data)))
        shaped.sample_rate = rate
        yield shaped


def _pcm(frame: av.AudioFrame, channels: int) -> memoryview:
    """The interleaved 16-bit samples of a packed s16 frame (its plane may be padded)."""
    return memoryview(frame.planes[0])[: frame.samples * channels * 2]


def _wav(
    frames: Iterator[av.AudioFrame], target: str, rate: int, channels: int, declared: int | None, sink: _Bounded
) -> int:
    """16-bit PCM WAV; the standard library writes the RIFF header.

    With `declared` samples, the header says so before the first sample and
    exactly that many are written: decoded samples past the count are
    dropped, and a count the decoder falls short of (a damaged last block)
    is made up with silence, written a batch at a time, so the size promised
    to clients holds. Returns the samples decoded.
    """
    resampler = av.AudioResampler(format="s16", layout=_LAYOUTS[channels], rate=rate)
    frame_bytes = 2 * channels
    decoded = written = 0
    pending: list[bytes] = []  # written in batches: a GSM frame is 320 samples, 15,000 in ten minutes
    size = 0
    if declared is not None:
        sink.add(_WAV_HEADER_BYTES + declared * frame_bytes)  # known before a sample is decoded
    with _output(target, visible=declared is not None) as out_file, wave.open(out_file, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        if declared is not None:
            out.setnframes(declared)
            out.writeframesraw(b"")  # the header alone, with the size, for the edge to read at once
            out_file.flush()
        for frame in _resampled(frames, resampler):
            decoded += frame.samples
            data = _pcm(frame, channels)
            if declared is not None:
                data = data[: (declared - written) * frame_bytes]
            else:
                sink.add(len(data))
            pending.append(bytes(data))
            size += len(data)
            written += len(data) // frame_bytes
            if size >= _WRITE_BYTES:
                out.writeframesraw(b"".join(pending))
                out_file.flush()
                pending.clear()
                size = 0
            if declared is not None and written >= declared:
                break
        out.writeframesraw(b"".join(pending))
        if declared is not None:
            silence = bytes(_WRITE_BYTES - _WRITE_BYTES % frame_bytes)
            while written < declared:
                count = min(declared - written, len(silence) // frame_bytes)
                out.writeframesraw(silence[: count * frame_bytes])
                written += count
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
    with open_new(path) as sink:
        yield sink
    if not visible:
        os.replace(path, target)


def _encode(
    frames: Iterator[av.AudioFrame], target: str, encoder: _Encoder, rate: int, channels: int, sink: _Bounded
) -> int:
    rates = sorted(av.codec.Codec(encoder.codec, "w").audio_rates or (rate,))
    out_rate = next((supported for supported in rates if supported >= rate), rates[-1])
    samples = 0
    with open_new(target) as file, av.open(file, "w", format=encoder.container, options=_BITEXACT) as output:
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
            for packet in stream.encode(frame):
                sink.add(packet.size)
                output.mux(packet)
        output.mux(stream.encode(None))
    return samples * rate // out_rate


def _peaks(frames: Iterator[av.AudioFrame], target: str, rate: int, pixels: int, estimate: int | None) -> int:
    builder = PeaksBuilder(rate, pixels, estimate)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    for frame in _resampled(frames, resampler):
        builder.add(_pcm(frame, 1))
    with open_new(target) as sink:
        sink.write(dumps(builder.finish()))
    return builder.samples


def _split_peaks(frames: Iterator[av.AudioFrame], target: str, rate: int, pixels: int, estimate: int | None) -> int:
    """Peaks of each channel of 16-bit planar frames (`_shaped`), as one audiowaveform document."""
    builders: list[PeaksBuilder] = []
    for frame in frames:
        if not builders:
            builders = [PeaksBuilder(rate, pixels, estimate) for _ in frame.planes]
        for builder, plane in zip(builders, frame.planes):
            builder.add(memoryview(plane)[: frame.samples * 2])
    if not builders:
        return 0
    with open_new(target) as sink:
        sink.write(dumps(interleaved([builder.finish() for builder in builders])))
    return builders[0].samples


def _estimated_samples(container: av.container.InputContainer, stream: av.AudioStream, rate: int) -> int | None:
    """The length the container declares, for the first guess of samples per pixel."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        return container.duration * rate // 1_000_000
    return None


def _why(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
