"""Renditions, piece by piece: request parsing, probing, conversions, peaks, the cache and its locks.

Recordings are made here with ffmpeg (a few seconds each; the ten-minute
ones are in test_transcode_e2e.py and test_transcode_browser.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import wave
from array import array
from pathlib import Path

import av
import pytest
from support.polling import poll
from support.recordings import make_audio, make_video

from gateway.config import ConfigError, load_settings
from gateway.config.settings import Transcode
from gateway.links.decision import Refusal
from gateway.links.views import view
from gateway.storage import StorageUnavailable
from gateway.transcode.cache import PARTIAL_SUFFIX, OpenRenditions, RenditionCache, RenditionFile, key_lock_offset
from gateway.transcode.convert import render
from gateway.transcode.growing import HEADER_BYTES, declared_size, follow
from gateway.transcode.peaks import PeaksBuilder
from gateway.transcode.pool import ProcessDied, ProcessPool
from gateway.transcode.probe import PROBE_BYTES, probe, quick_probe
from gateway.transcode.renditions import derived_etag
from gateway.transcode.spec import DEFAULT_PIXELS, MAX_PIXELS, Rendered, TooLong, Undecodable, Wanted

SECONDS = 3
RATE = 8000

# -- what a link asks for -------------------------------------------------------


def wanted(params: dict[str, str], inline: bool, inline_renditions: bool) -> Wanted | Refusal | None:
    """The rendition a link's view asks for (or why it is refused)."""
    got = view({**params, **({"inline": "1"} if inline else {})}, False, inline_renditions)
    return got if isinstance(got, Refusal) else got.rendition


@pytest.mark.parametrize(
    ("params", "inline", "expected"),
    [
        ({}, False, None),
        ({}, True, Wanted("wav", explicit=False)),
        ({"format": "mp3"}, False, Wanted("mp3", explicit=True)),
        ({"format": "OPUS"}, True, Wanted("opus", explicit=True)),
        ({"format": " wav "}, False, Wanted("wav", explicit=True)),
        ({"peaks": "1"}, False, Wanted("peaks", explicit=True, pixels=DEFAULT_PIXELS)),
        ({"peaks": "true", "pixels": "640"}, False, Wanted("peaks", explicit=True, pixels=640)),
        ({"peaks": "0"}, False, None),
        ({"peaks": "0"}, True, Wanted("wav", explicit=False)),
        ({"pixels": "99999"}, False, None),  # pixels without peaks changes nothing
    ],
)
def test_wanted(params: dict[str, str], inline: bool, expected: Wanted | None) -> None:
    assert wanted(params, inline, inline_renditions=True) == expected


def test_inline_renditions_can_be_turned_off_but_explicit_ones_stay() -> None:
    assert wanted({}, True, inline_renditions=False) is None
    assert wanted({"format": "mp3"}, True, inline_renditions=False) == Wanted("mp3", explicit=True)


@pytest.mark.parametrize(
    ("params", "reason", "words"),
    [
        ({"format": "flac"}, "format", ["'flac'", "mp3, opus, wav"]),
        ({"format": ""}, "format", ["mp3, opus, wav"]),
        ({"format": "mp3", "peaks": "1"}, "format", ["together"]),
        ({"peaks": "maybe"}, "peaks", ["peaks=1"]),
        ({"peaks": "1", "pixels": "0"}, "pixels", [str(MAX_PIXELS)]),
        ({"peaks": "1", "pixels": str(MAX_PIXELS + 1)}, "pixels", [str(MAX_PIXELS)]),
        ({"peaks": "1", "pixels": "1e3"}, "pixels", []),
        ({"peaks": "1", "pixels": "²"}, "pixels", []),
        ({"peaks": "1", "pixels": "-5"}, "pixels", []),
        ({"peaks": "1", "pixels": "9" * 5000}, "pixels", []),
    ],
)
def test_values_not_served_are_400_naming_what_is(params: dict[str, str], reason: str, words: list[str]) -> None:
    refused = wanted(params, False, inline_renditions=True)
    assert isinstance(refused, Refusal)
    assert refused.status == 400
    assert refused.reason == reason
    for word in words:
        assert refused.message is not None and word in refused.message


@pytest.mark.parametrize(
    ("kind", "name", "renamed"),
    [
        ("mp3", "call.wav", "call.mp3"),
        ("opus", "call.WAV", "call.opus"),
        ("wav", "call", "call.wav"),
        ("wav", "звонок клиента.wav", "звонок клиента.wav"),
        ("mp3", "2017.02.17 call.gsm", "2017.02.17 call.mp3"),
        ("peaks", "call.wav", "call.json"),
    ],
)
def test_renamed_to_the_output_extension(kind: str, name: str, renamed: str) -> None:
    assert Wanted(kind, explicit=True, pixels=10).rename(name) == renamed


def test_derived_etag_keeps_the_source_validator_and_adds_the_variant() -> None:
    assert derived_etag('"5f3c-9b2e"', "wav") == '"5f3c-9b2e-wav"'
    assert derived_etag('W/"abc"', "peaks8-1000") == '"abc-peaks8-1000"'
    assert Wanted("peaks", explicit=True, pixels=1000).variant == "peaks8-1000"


# -- recordings -----------------------------------------------------------------

CODECS = {
    "gsm.wav": ["-c:a", "gsm_ms"],
    "g726.wav": ["-c:a", "adpcm_g726", "-b:a", "32k"],
    "ima.wav": ["-c:a", "adpcm_ima_wav"],
    "ulaw.wav": ["-c:a", "pcm_mulaw"],
    "alaw.wav": ["-c:a", "pcm_alaw"],
    "pcm.wav": ["-c:a", "pcm_s16le"],
    "call.mp3": ["-c:a", "libmp3lame", "-b:a", "32k"],
}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("transcode-units")
    for name, codec in CODECS.items():
        make_audio(base / name, SECONDS, codec)
    make_audio(base / "call.opus", SECONDS, ["-c:a", "libopus", "-b:a", "24k"], rate=48000)
    make_audio(base / "stereo-44k.wav", SECONDS, ["-c:a", "adpcm_ima_wav", "-ac", "2"], rate=44100)
    make_video(base / "clip.webm", 2, ["-c:v", "libvpx", "-b:v", "100k", "-c:a", "libopus"])
    (base / "notes.txt").write_text("not audio at all\n" * 100)
    return base


@pytest.mark.parametrize(
    ("name", "container", "codec", "playable"),
    [
        ("gsm.wav", "wav", "gsm_ms", False),
        ("g726.wav", "wav", "adpcm_g726", False),
        ("ima.wav", "wav", "adpcm_ima_wav", False),
        ("ulaw.wav", "wav", "pcm_mulaw", True),
        ("alaw.wav", "wav", "pcm_alaw", True),
        ("pcm.wav", "wav", "pcm_s16le", True),
        ("call.mp3", "mp3", "mp3", True),
        ("call.opus", "ogg", "opus", True),
    ],
)
def test_probe_names_container_and_codec_from_the_bytes(
    recordings: Path, name: str, container: str, codec: str, playable: bool
) -> None:
    data = (recordings / name).read_bytes()
    found = probe(data[:4096], complete=False)  # the head is enough
    assert (found.container, found.codec, found.audio, found.playable) == (container, codec, True, playable)
    assert found.video is False


def test_probe_ignores_the_name(recordings: Path, tmp_path: Path) -> None:
    """A GSM WAV renamed .mp3 is still GSM in WAV: what the bytes say decides."""
    renamed = tmp_path / "really-gsm.mp3"
    renamed.write_bytes((recordings / "gsm.wav").read_bytes())
    found = probe(renamed.read_bytes(), complete=True)
    assert (found.container, found.codec, found.playable) == ("wav", "gsm_ms", False)


def test_probe_of_a_video_and_of_what_is_not_audio(recordings: Path) -> None:
    clip = probe((recordings / "clip.webm").read_bytes(), complete=True)
    assert clip.video and clip.audio and clip.codec == "opus" and clip.playable
    text = probe((recordings / "notes.txt").read_bytes(), complete=True)
    assert not text.audio and text.problem and text.complete
    assert not probe(os.urandom(5000), complete=True).audio
    assert not probe(b"", complete=True).audio
    assert not probe((recordings / "gsm.wav").read_bytes()[:30], complete=True).audio


# -- conversions ----------------------------------------------------------------


def decoded(path: Path) -> tuple[str, str, int, int, float]:
    """(container, codec, sample rate, channels, seconds) of what PyAV decodes from `path`."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        context = stream.codec_context
        return (
            container.format.name,
            context.codec.canonical_name,
            context.sample_rate,
            context.channels,
            samples / context.sample_rate,
        )


@pytest.mark.parametrize("name", ["gsm.wav", "g726.wav", "ima.wav", "ulaw.wav", "call.mp3", "call.opus"])
def test_wav_rendition_is_16_bit_pcm_at_the_source_rate(recordings: Path, tmp_path: Path, name: str) -> None:
    target = tmp_path / "out.wav"
    rendered = render(str(recordings / name), str(target), "wav")
    rate = 48000 if name.endswith(".opus") else RATE
    container, codec, out_rate, channels, seconds = decoded(target)
    assert (container, codec, out_rate, channels) == ("wav", "pcm_s16le", rate, 1)
    assert seconds == pytest.approx(SECONDS, abs=0.1)
    assert rendered.seconds == pytest.approx(seconds, abs=0.001)
    assert rendered.codec == CODECS_BY_NAME.get(name, rendered.codec)
    # The RIFF header's sizes are exact: data follows a 44-byte header, nothing after it.
    assert target.stat().st_size == 44 + round(seconds * rate) * 2


CODECS_BY_NAME = {"gsm.wav": "gsm_ms", "g726.wav": "adpcm_g726", "ima.wav": "adpcm_ima_wav", "ulaw.wav": "pcm_mulaw"}


@pytest.mark.parametrize(
    ("kind", "container", "codec", "rate"),
    [("mp3", "mp3", "mp3", 44100), ("opus", "ogg", "opus", 48000), ("wav", "wav", "pcm_s16le", 44100)],
)
def test_stereo_44k_source_in_each_format(
    recordings: Path, tmp_path: Path, kind: str, container: str, codec: str, rate: int
) -> None:
    target = tmp_path / f"out.{kind}"
    render(str(recordings / "stereo-44k.wav"), str(target), kind)
    found = decoded(target)
    assert found[:4] == (container, codec, rate, 2)
    assert found[4] == pytest.approx(SECONDS, abs=0.1)


@pytest.mark.parametrize("kind", ["wav", "mp3", "opus", "peaks"])
def test_conversions_are_deterministic(recordings: Path, tmp_path: Path, kind: str) -> None:
    """The ETag promises the same bytes when a rendition is made again (after eviction, in another worker)."""
    first, second = tmp_path / "first", tmp_path / "second"
    render(str(recordings / "gsm.wav"), str(first), kind, 300)
    render(str(recordings / "gsm.wav"), str(second), kind, 300)
    assert first.read_bytes() == second.read_bytes()


def test_not_audio_truncated_and_cut_short(recordings: Path, tmp_path: Path) -> None:
    for data in ((recordings / "notes.txt").read_bytes(), b"", (recordings / "gsm.wav").read_bytes()[:40]):
        source = tmp_path / "source"
        source.write_bytes(data)
        with pytest.raises(Undecodable) as refused:
            render(str(source), str(tmp_path / "out.wav"), "wav")
        assert str(refused.value)
    # Cut in the middle of its audio: converted as far as it goes, as ffmpeg does.
    whole = (recordings / "gsm.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    rendered = render(str(cut), str(tmp_path / "cut-out.wav"), "wav")
    assert rendered.seconds == pytest.approx(SECONDS / 2, abs=0.1)
    # A video's audio converts too (explicit ?format= on a video file).
    assert render(str(recordings / "clip.webm"), str(tmp_path / "clip.mp3"), "mp3").codec == "opus"


@pytest.fixture(scope="module")
def minute(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minute of each codec: a conversion that lasts long enough to be watched while it runs."""
    base = tmp_path_factory.mktemp("transcode-minute")
    for name in ("gsm.wav", "g726.wav", "ima.wav"):
        make_audio(base / name, 60, CODECS[name])
    make_audio(base / "call.mp3", 60, CODECS["call.mp3"])
    return base


def watched(source: Path, target: Path) -> tuple[list[bytes], Rendered]:
    """Convert to WAV in a pool process while this process reads `target` again and again.

    Returns every content seen while the conversion ran, in order, and what
    the conversion returned. The converter is another process, so the
    reader never waits for it to let go of a GIL.
    """
    pool = ProcessPool("test", 1, idle=False)

    async def scenario() -> tuple[list[bytes], Rendered]:
        await pool.run(os.getpid)  # started, PyAV loaded
        job = asyncio.ensure_future(pool.run(render, str(source), str(target), "wav"))
        seen = []
        while not job.done():
            with contextlib.suppress(FileNotFoundError):
                seen.append(target.read_bytes())
            await asyncio.sleep(0)
        return seen, job.result()

    try:
        return asyncio.run(scenario())
    finally:
        pool.close()


@pytest.mark.parametrize("name", ["gsm.wav", "g726.wav", "ima.wav"])
def test_telephony_wav_is_written_header_first_with_its_final_size(minute: Path, tmp_path: Path, name: str) -> None:
    """The size the edge promises from the first header it reads is the size of the finished file."""
    target = tmp_path / "out.wav"
    seen, rendered = watched(minute / name, target)
    final = target.read_bytes()
    assert len(final) == HEADER_BYTES + round(rendered.seconds * RATE) * 2
    with_header = [content for content in seen if len(content) >= HEADER_BYTES]
    assert any(len(content) < len(final) for content in with_header), "never seen before it was complete"
    assert {declared_size(content) for content in with_header} == {len(final)}
    assert all(final.startswith(content) for content in seen)  # written in order, nothing rewritten


def test_a_wav_cut_short_declares_what_its_packets_hold(minute: Path, tmp_path: Path) -> None:
    """Counted from the packets really there, not from the header's claim for the whole call."""
    whole = (minute / "gsm.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    target = tmp_path / "out.wav"
    seen, rendered = watched(cut, target)
    final = target.stat().st_size
    assert {declared_size(content) for content in seen if len(content) >= HEADER_BYTES} == {final}
    assert final == pytest.approx(HEADER_BYTES + 30 * RATE * 2, abs=2 * 320)  # half a minute, give or take a block
    assert abs(rendered.seconds * RATE - (final - HEADER_BYTES) // 2) <= 320  # one GSM block, padded or dropped


def test_sources_whose_length_needs_decoding_appear_only_when_complete(minute: Path, tmp_path: Path) -> None:
    """MP3 primes its decoder, so its packets overstate the samples: the WAV is written aside, then renamed.

    Whoever looks at the target name while the conversion runs sees nothing
    or the whole file, never a header whose size is still to be patched.
    """
    target = tmp_path / "out.wav"
    seen, rendered = watched(minute / "call.mp3", target)
    final = target.stat().st_size
    assert {len(content) for content in seen} <= {final}
    assert not (tmp_path / ("out.wav" + PARTIAL_SUFFIX)).exists()
    with wave.open(str(target)) as out:
        assert out.getnframes() == (final - HEADER_BYTES) // 2
        assert out.getnframes() / out.getframerate() == pytest.approx(rendered.seconds, abs=0.001)
        assert out.getnframes() / out.getframerate() == pytest.approx(60, abs=0.05)


@pytest.mark.parametrize("kind", ["wav", "opus", "peaks"])
def test_a_conversion_past_its_cpu_time_is_too_long(tmp_path: Path, kind: str) -> None:
    long = make_audio(tmp_path / "long.wav", 120, ["-c:a", "gsm_ms"])
    with pytest.raises(TooLong) as stopped:
        render(str(long), str(tmp_path / "out"), kind, 100, cpu_seconds=0.01)
    assert "0.01 CPU-seconds" in str(stopped.value)
    # The limit is per call: the same file within its time converts whole.
    assert render(str(long), str(tmp_path / "out"), kind, 100, cpu_seconds=60).seconds == pytest.approx(120, abs=0.1)


# -- the process pools -------------------------------------------------------------------


def test_a_call_whose_process_dies_twice_fails_and_the_pool_is_replaced() -> None:
    pool = ProcessPool("test", 1, idle=False)

    async def scenario() -> tuple[int, int, int]:
        first = await pool.run(os.getpid)
        with pytest.raises(ProcessDied):
            await pool.run(os._exit, 3)  # a decoder crash, as far as the pool can tell: tried twice
        second = await pool.run(os.getpid)
        # Killed between calls (the OOM killer): the next call is not blamed, it runs in a new pool.
        os.kill(second, signal.SIGKILL)
        await asyncio.to_thread(poll, lambda: pid_gone(second), bool, 10.0)
        return first, second, await pool.run(os.getpid)

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        pool.close()
    assert len({first, second, third}) == 3


def test_calls_broken_by_another_calls_crash_are_made_again(tmp_path: Path) -> None:
    """Two calls share a pool; one crashes it: the other is not lost."""
    pool = ProcessPool("test", 2, idle=False)
    marker = tmp_path / "crashed-once"

    async def scenario() -> tuple[BaseException | float, ...]:
        await pool.run(os.getpid)
        slow = asyncio.ensure_future(pool.run(time.sleep, 0.5))
        await asyncio.sleep(0.1)  # only an ordering hint: the slow call is running or queued either way
        crash = asyncio.ensure_future(pool.run(crash_once, str(marker)))
        return tuple(await asyncio.gather(slow, crash, return_exceptions=True))

    try:
        slow, crash = asyncio.run(scenario())
    finally:
        pool.close()
    assert slow is None  # time.sleep returned: made again after the crash broke the pool
    assert crash == "second time"


def crash_once(marker: str) -> str:
    """Dies the first time (a crash the OOM killer could cause), works the second."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(9)
    return "second time"


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_declared_size_reads_only_whole_wav_headers() -> None:
    header = b"RIFF" + (1036).to_bytes(4, "little") + b"WAVE" + b"\0" * 32
    assert declared_size(header) == 1044
    assert declared_size(header[:43]) is None
    assert declared_size(b"RIFX" + header[4:]) is None
    assert declared_size(header[:8] + b"AVI " + header[12:]) is None


async def read_all(file: RenditionFile, start: int, stop: int) -> bytes:
    parts = []
    async for data in file.iter_bytes(start, stop):
        parts.append(data)
    return b"".join(parts)


def wav_header(data_bytes: int) -> bytes:
    return b"RIFF" + (36 + data_bytes).to_bytes(4, "little") + b"WAVE" + b"\0" * 32


def test_a_growing_rendition_is_read_as_it_is_written(tmp_path: Path) -> None:
    """Opened once the header is whole; reads past what is written wait, they never come back short."""
    path = tmp_path / "growing.wav"
    body = bytes(range(256)) * 40
    header = wav_header(len(body))

    async def scenario() -> tuple[int, bytes, bytes]:
        finished = False

        async def write_slowly() -> None:
            nonlocal finished
            with open(path, "wb", buffering=0) as out:  # noqa: ASYNC230 (the converter, played by the test: small writes)
                out.write(header[:20])  # not yet a whole header: follow() keeps waiting
                await asyncio.sleep(0.05)
                out.write(header[20:])
                for at in range(0, len(body), 1000):
                    await asyncio.sleep(0.01)
                    out.write(body[at : at + 1000])
            finished = True

        writer = asyncio.create_task(write_slowly())
        file = await follow(str(path), '"e"', 1, 4096, lambda: finished)
        assert file is not None
        try:
            tail = await read_all(file, file.size - 10, file.size)  # asked first: waits for the end
            whole = await read_all(file, 0, file.size)
        finally:
            await file.close()
        await writer
        return file.size, whole, tail

    size, whole, tail = asyncio.run(scenario())
    assert size == HEADER_BYTES + len(body)
    assert whole == header + body
    assert tail == body[-10:]


def test_a_growing_rendition_whose_conversion_stops_short_fails_like_a_storage(tmp_path: Path) -> None:
    path = tmp_path / "growing.wav"
    path.write_bytes(wav_header(1000) + b"x" * 100)

    async def scenario() -> None:
        finished = False
        file = await follow(str(path), '"e"', 1, 4096, lambda: finished)
        assert file is not None and file.size == HEADER_BYTES + 1000
        finished = True
        try:
            with pytest.raises(StorageUnavailable) as cut:
                await read_all(file, 0, file.size)
            assert cut.value.kind == "conversion"
        finally:
            await file.close()
        # A conversion that ended before any header was written: nothing to follow.
        assert await follow(str(tmp_path / "never.wav"), '"e"', 1, 4096, lambda: True) is None

    asyncio.run(scenario())


def test_peaks_file_is_audiowaveform_json(recordings: Path, tmp_path: Path) -> None:
    target = tmp_path / "peaks.json"
    render(str(recordings / "pcm.wav"), str(target), "peaks", 100)
    document = json.loads(target.read_bytes())
    assert set(document) == {"version", "channels", "sample_rate", "samples_per_pixel", "bits", "length", "data"}
    assert (document["version"], document["channels"], document["sample_rate"], document["bits"]) == (2, 1, RATE, 8)
    assert document["length"] == 100 and len(document["data"]) == 200
    assert document["samples_per_pixel"] == SECONDS * RATE // 100
    # Compare with the samples themselves (the source is PCM: nothing lost in decoding).
    samples = array("h")
    with wave.open(str(recordings / "pcm.wav")) as source:
        samples.frombytes(source.readframes(source.getnframes()))
    step = document["samples_per_pixel"]
    expected = []
    for start in range(0, len(samples), step):
        block = samples[start : start + step]
        expected += [min(block) >> 8, max(block) >> 8]
    assert document["data"] == expected


# -- the peaks builder ------------------------------------------------------------


def naive_peaks(samples: array, step: int) -> list[int]:
    data = []
    for start in range(0, len(samples), step):
        block = samples[start : start + step]
        data += [min(block) >> 8, max(block) >> 8]
    return data


@pytest.mark.parametrize(
    ("count", "pixels", "estimate", "chunk"),
    [
        (48_000, 100, 48_000, 320),  # estimate right
        (48_000, 100, 4_000, 320),  # estimate far too low: pixels merged
        (48_000, 100, None, 1000),  # no estimate
        (50, 1000, 50, 7),  # fewer samples than pixels
        (12_345, 7, 12_345, 4096),  # the last pixel is shorter
        (1, 10, 1, 1),
    ],
)
def test_peaks_builder_matches_a_naive_computation(count: int, pixels: int, estimate: int | None, chunk: int) -> None:
    import random

    generator = random.Random(count)
    samples = array("h", (generator.randint(-32768, 32767) for _ in range(count)))
    builder = PeaksBuilder(RATE, pixels, estimate)
    raw = samples.tobytes()
    for start in range(0, len(raw), chunk * 2):
        builder.add(raw[start : start + chunk * 2])
    document = builder.finish()
    step = document["samples_per_pixel"]
    assert 1 <= document["length"] <= pixels
    assert (document["length"] - 1) * step < count <= document["length"] * step
    assert document["data"] == naive_peaks(samples, step)
    assert all(-128 <= value <= 127 for value in document["data"])


def test_peaks_of_nothing() -> None:
    document = PeaksBuilder(RATE, 100, None).finish()
    assert document["length"] == 0 and document["data"] == []


# -- the cache and its locks ------------------------------------------------------


def cache_in(directory: Path, capacity: int = 1000, slots: int = 2) -> RenditionCache:
    cache = RenditionCache(directory, capacity, slots, chunk=100)
    cache.prepare()
    return cache


def publish(cache: RenditionCache, key: str, size: int, used: float) -> None:
    Path(cache.output_path(key)).write_bytes(b"x" * size)
    cache.store(key)
    os.utime(cache.finished / key, (used, used))


def test_least_recently_used_are_evicted_first_never_the_newest(tmp_path: Path) -> None:
    cache = cache_in(tmp_path, capacity=1000)
    now = time.time()
    publish(cache, "a", 400, now - 300)
    publish(cache, "b", 400, now - 200)
    assert cache.exists("a") and cache.exists("b")
    # Opening "a" makes it the most recently used (its mtime is refreshed).
    opened = cache.open("a")
    assert opened is not None and opened.data is None and opened.size == 400
    assert opened.fd is not None
    os.close(opened.fd)
    publish(cache, "c", 400, now)  # over the bound: "b" goes, not "a" nor the newest
    assert not cache.exists("b") and cache.exists("a") and cache.exists("c")
    publish(cache, "huge", 5000, now + 10)  # bigger than the bound: kept alone until the next one
    assert cache.exists("huge") and not cache.exists("a") and not cache.exists("c")
    assert cache.open("missing") is None
    small = tmp_path / "renditions" / "small"
    small.write_bytes(b"tiny")
    found = cache.open("small")
    assert found is not None and found.data == b"tiny" and found.fd is None
    cache.close()


def test_open_renditions_hand_out_their_own_descriptors_and_expire(tmp_path: Path) -> None:
    import asyncio

    cache = cache_in(tmp_path, capacity=10_000)
    publish(cache, "big", 300, time.time())
    hot = OpenRenditions(chunk=100, seconds=10.0, entries=2)
    opened = cache.open("big")
    assert opened is not None and opened.fd is not None
    hot.put("big", opened, now=0.0)
    first, second = hot.get("big", '"s-wav"', 7, now=1.0), hot.get("big", '"s-wav"', 7, now=2.0)
    assert first is not None and second is not None
    assert (first.size, first.etag, first.mtime) == (300, '"s-wav"', 7)
    os.unlink(cache.finished / "big")  # evicted meanwhile: still read whole through the descriptor

    async def read(file: RenditionFile) -> bytes:
        return b"".join([chunk async for chunk in file.iter_bytes(0, file.size)])

    assert asyncio.run(read(first)) == b"x" * 300
    asyncio.run(first.close())
    assert asyncio.run(read(second)) == b"x" * 300  # closing one response's file left the other's open
    asyncio.run(second.close())
    assert hot.get("big", '"s-wav"', 7, now=11.0) is None  # expired: its descriptor closed
    with pytest.raises(OSError):
        os.fstat(opened.fd)
    hot.close()
    cache.close()


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    for offset in map(int, sys.argv[2:]):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
    print("held", flush=True)
    sys.stdin.read()
    """
)


def hold_locks(lock_file: Path, offsets: list[int]) -> subprocess.Popen[str]:
    """Another process holding byte locks (as another worker would), until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file), *map(str, offsets)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_slots_and_keys_are_shared_by_the_processes_of_a_host(tmp_path: Path) -> None:
    cache = cache_in(tmp_path, slots=2)
    holder = hold_locks(tmp_path / "locks", [0, key_lock_offset("k1")])
    try:
        assert cache.try_key("k1") is False  # another process converts it
        assert cache.try_key("k2") is True
        assert cache.try_slot() == 1  # slot 0 is the other process's
        assert cache.try_slot() is None  # and this process holds slot 1 already
    finally:
        holder.stdin.close()
        holder.wait()
    assert cache.try_slot() == 0  # freed when the holder ended
    cache.release_slot(0)
    cache.release_slot(1)
    assert cache.try_key("k1") is True
    cache.close()


def test_leftovers_of_dead_conversions_are_removed_but_not_running_ones(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    Path(cache.source_path("dead")).write_bytes(b"x")
    Path(cache.output_path("dead")).write_bytes(b"x")
    Path(cache.output_path("dead") + PARTIAL_SUFFIX).write_bytes(b"x")
    Path(cache.source_path("alive")).write_bytes(b"x")
    cache.close()
    holder = hold_locks(tmp_path / "locks", [key_lock_offset("alive")])
    try:
        cache_in(tmp_path).close()
    finally:
        holder.stdin.close()
        holder.wait()
    assert sorted(os.listdir(tmp_path / "partial")) == ["alive.in"]


def test_a_finished_or_failed_conversion_leaves_nothing_in_partial(tmp_path: Path) -> None:
    cache = cache_in(tmp_path)
    for path in (cache.source_path("k"), cache.output_path("k"), cache.output_path("k") + PARTIAL_SUFFIX):
        Path(path).write_bytes(b"x")
    cache.remove_partial("k")
    cache.remove_partial("k")  # nothing left: not an error
    assert os.listdir(tmp_path / "partial") == []
    cache.close()


# -- configuration ----------------------------------------------------------------


def settings_env(root: Path, **extra: str) -> dict[str, str]:
    return {"GATEWAY_KEY": "00" * 32, "GATEWAY_STORAGE": root.as_uri(), **extra}


def test_transcode_settings_default_and_from_environment(tmp_path: Path) -> None:
    assert load_settings(None, settings_env(tmp_path)).transcode == Transcode()
    settings = load_settings(
        None,
        settings_env(
            tmp_path,
            GATEWAY_TRANSCODE_INLINE="off",
            GATEWAY_TRANSCODE_CACHE_DIR=str(tmp_path / "new" / "cache"),
            GATEWAY_TRANSCODE_CACHE_BYTES="10485760",
            GATEWAY_TRANSCODE_MAX_CONVERSIONS="4",
            GATEWAY_TRANSCODE_MAX_CPU_SECONDS="30.5",
        ),
    )
    assert settings.transcode == Transcode(False, tmp_path / "new" / "cache", 10485760, 4, 30.5)


def test_transcode_settings_from_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'key = "{"11" * 32}"\nstorage = "{tmp_path.as_uri()}"\n'
        f'[transcode]\ninline = false\ncache_dir = "{tmp_path}"\nmax_conversions = 3\n'
    )
    assert load_settings(config, {}).transcode == Transcode(False, tmp_path, Transcode.cache_bytes, 3)


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("GATEWAY_TRANSCODE_INLINE", "sometimes", "not true or false"),
        ("GATEWAY_TRANSCODE_CACHE_DIR", "relative/dir", "absolute"),
        ("GATEWAY_TRANSCODE_CACHE_DIR", "/etc/hostname", "not a directory"),
        ("GATEWAY_TRANSCODE_CACHE_BYTES", "1000", "outside"),
        ("GATEWAY_TRANSCODE_MAX_CONVERSIONS", "0", "outside"),
        ("GATEWAY_TRANSCODE_MAX_CONVERSIONS", "two", "whole number"),
        ("GATEWAY_TRANSCODE_MAX_CPU_SECONDS", "-1", "outside"),
        ("GATEWAY_TRANSCODE_MAX_CPU_SECONDS", "an hour", "not a number"),
    ],
)
def test_bad_transcode_settings_stop_the_start(tmp_path: Path, variable: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(None, settings_env(tmp_path, **{variable: value}))
    assert variable in str(error.value) and words in str(error.value)


def test_example_config_documents_the_transcode_section(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"
    assert "[transcode]" in example.read_text()
    settings = load_settings(example, settings_env(tmp_path))
    assert settings.transcode.inline is True and settings.transcode.max_conversions >= 1


# -- probing without FFmpeg ----------------------------------------------------------------------

QUICK = {
    "pcm.wav": ["-c:a", "pcm_s16le"], "s24.wav": ["-c:a", "pcm_s24le"], "f32.wav": ["-c:a", "pcm_f32le"],
    "ulaw.wav": ["-c:a", "pcm_mulaw"], "alaw.wav": ["-c:a", "pcm_alaw"], "gsm.wav": ["-c:a", "gsm_ms"],
    "ima.wav": ["-c:a", "adpcm_ima_wav"], "ms.wav": ["-c:a", "adpcm_ms"], "g726.wav": ["-c:a", "adpcm_g726", "-b:a", "32k"],
    "call.mp3": ["-c:a", "libmp3lame"], "call.flac": ["-c:a", "flac"], "call.ogg": ["-c:a", "libvorbis"],
}  # fmt: skip


@pytest.mark.parametrize("name", [*QUICK, "call.opus", "g722.wav", "call.m4a"])
def test_the_quick_probe_agrees_with_ffmpeg_or_leaves_it_to_ffmpeg(tmp_path: Path, name: str) -> None:
    """What PBXs write is read without FFmpeg, and read as FFmpeg reads it; the rest is left to FFmpeg."""
    args = (
        QUICK.get(name)
        or {"call.opus": ["-c:a", "libopus"], "g722.wav": ["-c:a", "g722"], "call.m4a": ["-c:a", "aac"]}[name]
    )
    rate = 48000 if name == "call.opus" else 16000 if name == "g722.wav" else 8000
    head = make_audio(tmp_path / name, 1, args, rate=rate).read_bytes()[:PROBE_BYTES]
    quick, full = quick_probe(head), probe(head, True)
    if name in QUICK or name == "call.opus":
        assert quick is not None and (quick.container, quick.codec, quick.playable, quick.audio) == (
            full.container, full.codec, full.playable, full.audio
        )  # fmt: skip
    else:
        assert quick is None  # G.722 and MP4 are FFmpeg's to read


@pytest.mark.parametrize(
    "head",
    [b"", b"RIFF", b"RIFF\x10\x00\x00\x00WAVEfmt \x02\x00\x00\x00", b"RIFF\x00\x00\x00\x00WAVEdata" + bytes(8),
     b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x00\x00\x40\x1f\x00\x00" + bytes(8),  # no channels
     b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x99\x09\x01\x00\x40\x1f\x00\x00" + bytes(8)],  # unknown tag
)  # fmt: skip
def test_the_quick_probe_leaves_what_it_is_not_sure_of_to_ffmpeg(head: bytes) -> None:
    assert quick_probe(head) is None


ORPHANING = """
import os, time
from gateway.transcode.pool import ProcessPool
executor = ProcessPool("orphan", 1, idle=False).start()
executor.submit(time.sleep, 30)  # its process is still starting (importing) when its parent goes
print(*(process.pid for process in executor._processes.values()), flush=True)
os._exit(0)
"""


def test_a_pool_process_whose_parent_dies_while_it_starts_ends_too() -> None:
    """It must not take pid 1 (or a subreaper) for its parent and live on for ever (seen: for hours)."""
    done = subprocess.run([sys.executable, "-c", ORPHANING], capture_output=True, text=True, timeout=60, check=True)
    children = [int(pid) for pid in done.stdout.split()]
    assert children  # the pool started a process before its parent went
    assert poll(lambda: [pid for pid in children if not pid_gone(pid)], lambda alive: not alive, timeout=30.0) == []


def test_the_rendition_limit_is_lowered_to_the_cache_bound(tmp_path: Path) -> None:
    small = load_settings(None, settings_env(tmp_path, GATEWAY_TRANSCODE_CACHE_BYTES=str(10 * 2**20))).transcode
    assert small.max_rendition_bytes > small.cache_bytes and small.rendition_limit == small.cache_bytes
    assert Transcode().rendition_limit == Transcode().max_rendition_bytes  # the defaults fit as they are
