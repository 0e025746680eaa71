"""Renditions through a real `storage-gateway serve`: inline playback, ranges, formats, peaks, limits.

Ten-minute 8 kHz mono recordings are made here with ffmpeg, in the codecs
PBXs store calls in (GSM 6.10, G.726 and IMA ADPCM in WAV) and in ones
browsers play (µ-law and PCM WAV, MP3), plus a file that is not audio and
WAVs cut short. Outputs are decoded back with PyAV. Playback in Chromium is
in test_transcode_browser.py.

Nothing here asserts how fast anything is: timings of small downloads while
conversions run are printed (`pytest -s`) for the report, not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import statistics
import threading
import time
import wave
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import av
import pytest
from support.http import Reply, parse_byteranges, request, split_base
from support.keys import new_key
from support.ops import Samples, metric, scrape
from support.polling import poll
from support.processes import Gateway, running_gateway
from support.recordings import make_audio
from support.s3 import gateway_s3_env, running_moto, s3_client
from support.storage import FIXED_MTIME

from gateway.links.signing import LinkSigner

SECONDS = 600
RATE = 8000
PCM_SIZE = 44 + SECONDS * RATE * 2  # the WAV rendition of ten minutes of 8 kHz mono
UNPLAYABLE = {"/calls/gsm.wav": "gsm_ms", "/calls/g726.wav": "adpcm_g726", "/calls/ima.wav": "adpcm_ima_wav"}
PLAYABLE = ["/calls/ulaw.wav", "/calls/pcm.wav", "/calls/call.mp3"]
GSM = "/calls/gsm.wav"
NOT_AUDIO = "/calls/notes.wav"
CUT = "/calls/cut.wav"  # GSM WAV cut at 40 %: a call whose upload broke off
HEADER_ONLY = "/calls/header-only.wav"  # its first 40 bytes
CYRILLIC = "/calls/звонок клиента.wav"
SMALL = "/calls/small-64k.bin"
LONG = "/calls/long-gsm.wav"  # forty minutes: a conversion that lasts about a second, long enough to watch
LONG_SECONDS = 2400
SHORT = "/calls/short-gsm.wav"  # one second
CUT_FRACTION = 0.4


@dataclass
class Library:
    root: Path

    def data(self, path: str) -> bytes:
        return (self.root / path.lstrip("/")).read_bytes()

    def add_copy(self, source: str, path: str) -> str:
        """A copy of `source` under a new name: a recording no gateway has converted yet."""
        target = self.root / path.lstrip("/")
        shutil.copyfile(self.root / source.lstrip("/"), target)
        return path


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    root = tmp_path_factory.mktemp("transcode-e2e") / "storage"
    calls = root / "calls"
    codecs = {
        "gsm.wav": ["-c:a", "gsm_ms"],
        "g726.wav": ["-c:a", "adpcm_g726", "-b:a", "32k"],
        "ima.wav": ["-c:a", "adpcm_ima_wav"],
        "ulaw.wav": ["-c:a", "pcm_mulaw"],
        "pcm.wav": ["-c:a", "pcm_s16le"],
        "call.mp3": ["-c:a", "libmp3lame", "-b:a", "32k"],
    }
    for name, codec in codecs.items():
        make_audio(calls / name, SECONDS, codec)
    make_audio(calls / "long-gsm.wav", LONG_SECONDS, ["-c:a", "gsm_ms"])
    make_audio(calls / "short-gsm.wav", 1, ["-c:a", "gsm_ms"])
    gsm = (calls / "gsm.wav").read_bytes()
    (calls / "cut.wav").write_bytes(gsm[: int(len(gsm) * CUT_FRACTION)])
    (calls / "header-only.wav").write_bytes(gsm[:40])
    (calls / "звонок клиента.wav").write_bytes(gsm)
    (calls / "notes.wav").write_bytes(b"Meeting notes, not a recording.\n" * 2000)
    (calls / "small-64k.bin").write_bytes(hashlib.sha256(b"seed").digest() * 2048)
    for path in calls.iterdir():
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return Library(root)


def transcode_env(cache: Path, **extra: str) -> dict[str, str]:
    return {"GATEWAY_TRANSCODE_CACHE_DIR": str(cache), **extra}


@pytest.fixture(scope="module")
def edge(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One worker, inline renditions on, two conversions at once."""
    work = tmp_path_factory.mktemp("transcode-gateway")
    env = transcode_env(work / "cache", GATEWAY_TRANSCODE_MAX_CONVERSIONS="2")
    with running_gateway(library.root, [new_key()], work, extra_env=env) as running:
        yield running


def get(
    gateway: Gateway, path: str, query: str = "", headers: Mapping[str, str] | None = None, method: str = "GET"
) -> Reply:
    return request(gateway.base_url, gateway.target(path) + query, method=method, headers=headers, timeout=120)


def decoded(data: bytes) -> tuple[str, str, int, int, float]:
    """(container, codec, sample rate, channels, seconds) of what PyAV decodes from `data`."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        context = stream.codec_context
        rate = context.sample_rate
        return container.format.name, context.codec.canonical_name, rate, context.channels, samples / rate


def metrics(gateway: Gateway) -> Samples:
    return scrape(gateway.base_url)


def settled(gateway: Gateway, kind: str = "wav") -> Samples:
    """Metrics once no conversion runs: a streamed rendition's last byte can be sent before its
    conversion is counted done (liveness bound only)."""
    return poll(
        lambda: metrics(gateway), lambda values: metric(values, "gateway_active_conversions", format=kind) == 0, 30.0
    )


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter grew between two scrapes."""
    return metric(after, name, **labels) - metric(before, name, **labels)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- inline playback ---------------------------------------------------------------


@pytest.mark.parametrize("path", list(UNPLAYABLE))
def test_inline_link_to_unplayable_audio_gets_a_pcm_wav_rendition(edge: Gateway, library: Library, path: str) -> None:
    original = get(edge, path, method="HEAD")
    reply = get(edge, path, "?inline=1")
    assert reply.status == 200, reply.body[:200]
    assert reply.header("content-type") == "audio/wav"
    assert reply.header("accept-ranges") == "bytes"
    assert reply.header("content-length") == str(len(reply.body))
    assert reply.header("content-disposition") == f'inline; filename="{path.rpartition("/")[2]}"'
    assert reply.header("etag") == original.header("etag")[:-1] + '-wav"'
    assert reply.header("last-modified") == original.header("last-modified")
    with wave.open(io.BytesIO(reply.body)) as rendition:
        assert (rendition.getnchannels(), rendition.getsampwidth(), rendition.getframerate()) == (1, 2, RATE)
        assert rendition.getnframes() / RATE == pytest.approx(SECONDS, abs=0.1)
    assert decoded(reply.body)[1] == "pcm_s16le"


@pytest.mark.parametrize("path", PLAYABLE)
def test_inline_link_to_playable_audio_gets_the_original(edge: Gateway, library: Library, path: str) -> None:
    reply = get(edge, path, "?inline=1")
    assert reply.status == 200
    assert reply.body == library.data(path)
    assert reply.header("etag") == get(edge, path, method="HEAD").header("etag")
    assert not reply.header("etag").endswith('-wav"')


def test_download_without_inline_sends_the_original_bytes_untouched(edge: Gateway, library: Library) -> None:
    reply = get(edge, GSM)
    assert reply.status == 200 and reply.body == library.data(GSM)
    assert reply.header("content-disposition") == 'attachment; filename="gsm.wav"'


def test_rendition_ranges_agree_byte_for_byte_with_a_full_download(edge: Gateway) -> None:
    full = get(edge, GSM, "?inline=1")
    assert full.status == 200 and len(full.body) == PCM_SIZE
    size = len(full.body)
    for start, stop in [(0, 0), (0, 43), (44, 100_000), (4_800_000, 4_865_535), (size - 320_000, size - 1)]:
        part = get(edge, GSM, "?inline=1", {"Range": f"bytes={start}-{stop}"})
        assert part.status == 206
        assert part.header("content-range") == f"bytes {start}-{stop}/{size}"
        assert part.header("etag") == full.header("etag")
        assert part.body == full.body[start : stop + 1]
    assert get(edge, GSM, "?inline=1", {"Range": "bytes=9000000-"}).body == full.body[9_000_000:]
    assert get(edge, GSM, "?inline=1", {"Range": "bytes=-1000"}).body == full.body[-1000:]
    several = get(edge, GSM, "?inline=1", {"Range": "bytes=0-99,5000000-5000999,-10"})
    assert several.status == 206
    parts = parse_byteranges(several.header("content-type"), several.body)
    assert [part.data for part in parts] == [full.body[:100], full.body[5_000_000:5_001_000], full.body[-10:]]
    assert all(part.content_type == "audio/wav" for part in parts)
    beyond = get(edge, GSM, "?inline=1", {"Range": f"bytes={size}-"})
    assert beyond.status == 416 and beyond.header("content-range") == f"bytes */{size}"
    head = get(edge, GSM, "?inline=1", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert (head.header("content-length"), head.header("etag")) == (str(size), full.header("etag"))


def test_rendition_validators_and_conditional_requests(edge: Gateway) -> None:
    full = get(edge, GSM, "?inline=1")
    etag, modified = full.header("etag"), full.header("last-modified")
    not_modified = get(edge, GSM, "?inline=1", {"If-None-Match": etag})
    assert not_modified.status == 304 and not_modified.header("etag") == etag and not_modified.body == b""
    assert get(edge, GSM, "?inline=1", {"If-Modified-Since": modified}).status == 304
    resumed = get(edge, GSM, "?inline=1", {"Range": "bytes=100-199", "If-Range": etag})
    assert resumed.status == 206 and resumed.body == full.body[100:200]
    # The original's ETag is not the rendition's: resuming across them restarts from zero.
    original_etag = get(edge, GSM, method="HEAD").header("etag")
    restarted = get(edge, GSM, "?inline=1", {"Range": "bytes=100-199", "If-Range": original_etag})
    assert restarted.status == 200 and restarted.body == full.body
    assert get(edge, GSM, "?inline=1", {"If-Match": original_etag}).status == 412


# -- explicit conversions --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "container", "codec", "rate"),
    [
        ("mp3", "audio/mpeg", "mp3", "mp3", RATE),
        ("opus", "audio/ogg", "ogg", "opus", 48000),  # Opus always decodes at 48 kHz
        ("wav", "audio/wav", "wav", "pcm_s16le", RATE),
    ],
)
def test_format_converts_for_download_and_decodes_back_with_the_right_duration(
    edge: Gateway, fmt: str, content_type: str, container: str, codec: str, rate: int
) -> None:
    reply = get(edge, GSM, f"?format={fmt}")
    assert reply.status == 200, reply.body[:200]
    assert reply.header("content-type") == content_type
    assert reply.header("content-disposition") == f'attachment; filename="gsm.{fmt}"'
    assert reply.header("etag").endswith(f'-{fmt}"')
    assert reply.header("content-length") == str(len(reply.body))
    found = decoded(reply.body)
    assert found[:4] == (container, codec, rate, 1)
    assert found[4] == pytest.approx(SECONDS, abs=0.1)
    again = get(edge, GSM, f"?format={fmt}")  # from the cache, same bytes and validator
    assert (again.body, again.header("etag")) == (reply.body, reply.header("etag"))


def test_format_of_an_mp3_recording(edge: Gateway) -> None:
    reply = get(edge, "/calls/call.mp3", "?format=wav")
    assert reply.status == 200
    assert reply.header("content-disposition") == 'attachment; filename="call.wav"'
    assert decoded(reply.body)[4] == pytest.approx(SECONDS, abs=0.1)


def test_format_keeps_a_non_ascii_name_with_the_new_extension(edge: Gateway) -> None:
    reply = get(edge, CYRILLIC, "?format=mp3&inline=1")
    assert reply.status == 200
    disposition = reply.header("content-disposition")
    assert disposition.startswith("inline; filename=") and '.mp3"; ' in disposition
    assert disposition.endswith("filename*=UTF-8''" + quote("звонок клиента.mp3", safe=""))


def test_unsupported_format_is_400_with_the_accepted_ones(edge: Gateway) -> None:
    for query in ("?format=flac", "?format=", "?format=mp3&peaks=1"):
        reply = get(edge, GSM, query)
        assert reply.status == 400, query
        assert reply.header("content-type") == "text/plain; charset=utf-8"
    assert "mp3, opus, wav" in get(edge, GSM, "?format=flac").body.decode()


def test_not_audio_is_415_and_the_original_stays_downloadable(edge: Gateway, library: Library) -> None:
    for query in ("?format=mp3", "?format=wav", "?peaks=1"):
        refused = get(edge, NOT_AUDIO, query)
        assert refused.status == 415, query
        message = refused.body.decode()
        assert "not a recording" in message and "without format" in message
    assert get(edge, NOT_AUDIO).body == library.data(NOT_AUDIO)
    assert get(edge, NOT_AUDIO, "?inline=1").body == library.data(NOT_AUDIO)  # nothing to play: as it is


def test_wav_cut_short_converts_as_far_as_it_goes_and_a_bare_header_is_415(edge: Gateway, library: Library) -> None:
    inline = get(edge, CUT, "?inline=1")
    assert inline.status == 200 and inline.header("etag").endswith('-wav"')
    seconds = decoded(inline.body)[4]
    assert seconds == pytest.approx(SECONDS * CUT_FRACTION, abs=2)
    assert decoded(get(edge, CUT, "?format=mp3").body)[4] == pytest.approx(seconds, abs=0.1)
    assert get(edge, HEADER_ONLY, "?format=wav").status == 415
    assert get(edge, HEADER_ONLY, "?inline=1").body == library.data(HEADER_ONLY)


# -- a new rendition is sent while it is made ---------------------------------------------


@contextlib.contextmanager
def opened(gateway: Gateway, path: str, query: str, headers: Mapping[str, str] | None = None):
    """A response whose status and headers have arrived and whose body has not been read yet."""
    conn = http.client.HTTPConnection(*split_base(gateway.base_url), timeout=120)
    try:
        conn.request("GET", gateway.target(path) + query, headers=dict(headers or {}))
        yield conn.getresponse()
    finally:
        conn.close()


def test_a_new_inline_rendition_starts_before_its_conversion_ends(edge: Gateway, library: Library) -> None:
    """The headers, with the exact length, come while the converter is still at work; the bytes are the cache's."""
    path = library.add_copy(LONG, "/calls/streamed.wav")
    with opened(edge, path, "?inline=1") as response:
        converting = metric(metrics(edge), "gateway_active_conversions", format="wav")
        body = response.read()
    assert response.status == 200
    assert converting == 1, "the answer waited for the whole conversion"
    assert int(response.getheader("content-length")) == len(body) == 44 + LONG_SECONDS * RATE * 2
    cached = get(edge, path, "?inline=1")
    assert cached.body == body
    assert cached.header("etag") == response.getheader("etag")
    with wave.open(io.BytesIO(body)) as rendition:
        assert rendition.getnframes() == LONG_SECONDS * RATE


def test_a_range_of_a_rendition_being_made_waits_for_its_bytes(edge: Gateway, library: Library) -> None:
    """A player seeking to the end while the rendition is still being written: the right bytes, once there."""
    path = library.add_copy(LONG, "/calls/seek-first.wav")
    size = 44 + LONG_SECONDS * RATE * 2
    with opened(edge, path, "?inline=1") as first:
        assert metric(metrics(edge), "gateway_active_conversions", format="wav") == 1
        with opened(edge, path, "?inline=1", {"Range": "bytes=-65536,0-99"}) as seek:
            parts = parse_byteranges(seek.getheader("content-type"), seek.read())
        with opened(edge, path, "?inline=1", {"Range": "bytes=-65536"}) as tail:
            end = tail.read()
        body = first.read()
    assert (seek.status, tail.status) == (206, 206)
    assert tail.getheader("content-range") == f"bytes {size - 65536}-{size - 1}/{size}"
    assert end == body[-65536:]
    assert [part.data for part in parts] == [body[-65536:], body[:100]]


def pool_processes(pid: int) -> set[int]:
    """The probe and conversion pools' processes among a gateway's children (not the resource tracker)."""
    found = set()
    for child in children(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
    return found


def test_pool_processes_killed_cut_only_what_they_were_making(library: Library, tmp_path: Path) -> None:
    """A converter killed mid-stream: that transfer is cut short of Content-Length (never a
    complete-looking wrong body) and the next request succeeds. Processes killed while idle: nothing fails."""
    path = library.add_copy(LONG, "/calls/crash-midway.wav")
    work = tmp_path / "gateway"
    with running_gateway(library.root, [new_key()], work, extra_env=transcode_env(work / "cache")) as gateway:
        with opened(gateway, path, "?inline=1") as response:
            assert response.status == 200
            declared = int(response.getheader("content-length"))
            assert metric(metrics(gateway), "gateway_active_conversions", format="wav") == 1
            for pid in pool_processes(gateway.pid):
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(http.client.IncompleteRead) as cut:
                response.read()
        assert len(cut.value.partial) < declared
        again = get(gateway, path, "?inline=1")
        assert again.status == 200 and len(again.body) == declared
        assert cut.value.partial == again.body[: len(cut.value.partial)]  # what was sent was right as far as it went
        assert "conversion process died" in gateway.log.read_text()
        assert metric(metrics(gateway), "gateway_storage_errors_total", backend="rendition", kind="conversion") == 1
        # Every probe and converter process killed while idle (the OOM killer): nobody's request is blamed.
        idle = pool_processes(gateway.pid)
        assert len(idle) >= 1  # the converter started for the second request (processes start as calls need them)
        for pid in idle:
            os.kill(pid, signal.SIGKILL)
        poll(lambda: {pid for pid in idle if alive(pid)}, lambda pids: not pids, timeout=20.0)
        fresh = get(gateway, library.add_copy(GSM, "/calls/after-oom.wav"), "?inline=1")
        assert fresh.status == 200 and len(fresh.body) == PCM_SIZE


@pytest.fixture(scope="module")
def limited(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Conversions may use a twentieth of a CPU-second."""
    work = tmp_path_factory.mktemp("transcode-limited")
    env = transcode_env(work / "cache", GATEWAY_TRANSCODE_MAX_CPU_SECONDS="0.05")
    with running_gateway(library.root, [new_key()], work, extra_env=env) as running:
        yield running


def test_a_conversion_past_its_cpu_time_is_415_and_frees_its_slot(limited: Gateway, library: Library) -> None:
    reply = get(limited, GSM, "?format=opus")  # ten minutes of Opus: seconds of CPU
    assert reply.status == 415
    assert "CPU-seconds" in reply.body.decode() and "original is still available" in reply.body.decode()
    assert get(limited, GSM).body == library.data(GSM)
    assert metric(metrics(limited), "gateway_active_conversions", format="opus") == 0
    # A short recording still converts: the limit is per conversion.
    assert decoded(get(limited, SHORT, "?format=wav").body)[1] == "pcm_s16le"


def test_head_converts_too_and_announces_the_exact_length(edge: Gateway, library: Library) -> None:
    path = library.add_copy("/calls/ima.wav", "/calls/head-first.wav")
    head = get(edge, path, "?format=opus", method="HEAD")
    assert head.status == 200 and head.body == b""
    body = get(edge, path, "?format=opus")
    assert head.header("content-length") == str(len(body.body))
    assert head.header("etag") == body.header("etag")


# -- peaks -------------------------------------------------------------------------------


def check_audiowaveform(document: dict, pixels: int, samples: int) -> None:
    """The audiowaveform JSON format (version 2), as peaks.js and wavesurfer.js read it."""
    assert set(document) == {"version", "channels", "sample_rate", "samples_per_pixel", "bits", "length", "data"}
    assert document["version"] == 2 and document["channels"] == 1 and document["bits"] == 8
    assert document["sample_rate"] == RATE
    length, step = document["length"], document["samples_per_pixel"]
    assert isinstance(length, int) and isinstance(step, int) and step >= 1
    assert 1 <= length <= pixels
    assert len(document["data"]) == 2 * length
    assert (length - 1) * step < samples <= length * step
    pairs = list(zip(document["data"][::2], document["data"][1::2]))
    assert all(-128 <= low <= high <= 127 for low, high in pairs)


def test_peaks_are_audiowaveform_json(edge: Gateway) -> None:
    reply = get(edge, GSM, "?peaks=1")
    assert reply.status == 200
    assert reply.header("content-type") == "application/json"
    assert reply.header("etag").endswith('-peaks8-1000"')
    assert reply.header("content-disposition") == 'attachment; filename="gsm.json"'
    document = json.loads(reply.body)
    check_audiowaveform(document, 1000, SECONDS * RATE)
    assert (document["length"], document["samples_per_pixel"]) == (1000, SECONDS * RATE // 1000)
    # The test tone's amplitude (ffmpeg's sine source: 1/8 of full scale), within GSM's error.
    assert max(document["data"][1::2]) == pytest.approx(16, abs=3)
    assert min(document["data"][::2]) == pytest.approx(-16, abs=3)
    narrow = json.loads(get(edge, "/calls/g726.wav", "?peaks=1&pixels=300&inline=1").body)
    check_audiowaveform(narrow, 300, SECONDS * RATE)
    for pixels in ("0", "10001", "many"):
        assert get(edge, GSM, f"?peaks=1&pixels={pixels}").status == 400
    assert json.loads(get(edge, GSM, "?peaks=1&pixels=1").body)["length"] == 1


# -- signed links, strict mode, the switch ----------------------------------------------


def signed(gateway: Gateway, path: str, **params: str) -> str:
    """The query string (with `?`) of a signed link, as the link API makes it."""
    return "?" + LinkSigner(gateway.keys).sign(gateway.token(path), params)


def test_format_and_peaks_are_covered_by_the_signature(edge: Gateway) -> None:
    query = signed(edge, GSM, format="mp3")
    assert get(edge, GSM, query).status == 200
    assert get(edge, GSM, query.replace("format=mp3", "format=wav")).status == 403
    peaks = signed(edge, GSM, peaks="1", pixels="1000")
    assert get(edge, GSM, peaks).status == 200
    assert get(edge, GSM, peaks.replace("pixels=1000", "pixels=10")).status == 403
    assert get(edge, GSM, peaks + "&format=mp3").status == 403  # an added format is not signed


@pytest.fixture(scope="module")
def strict(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Unsigned links refused, and inline renditions turned off."""
    work = tmp_path_factory.mktemp("transcode-strict")
    env = transcode_env(work / "cache", GATEWAY_REQUIRE_SIGNED="true", GATEWAY_TRANSCODE_INLINE="false")
    with running_gateway(library.root, [new_key()], work, extra_env=env) as running:
        yield running


def test_strict_mode_refuses_unsigned_conversions(strict: Gateway) -> None:
    assert get(strict, GSM, "?format=wav").status == 403
    assert get(strict, GSM, "?peaks=1").status == 403
    assert get(strict, GSM, signed(strict, GSM, format="wav")).status == 200


def test_inline_renditions_turned_off_send_the_original(strict: Gateway, library: Library) -> None:
    reply = get(strict, GSM, signed(strict, GSM, inline="1"))
    assert reply.status == 200 and reply.body == library.data(GSM)
    assert reply.header("content-disposition").startswith("inline")
    # Explicit conversions stay available.
    assert decoded(get(strict, GSM, signed(strict, GSM, format="wav")).body)[1] == "pcm_s16le"


# -- storages that hand files off: renditions are still sent by the gateway ---------------


@pytest.fixture(scope="module")
def offload(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("transcode-offload")
    url = "file://" + quote(str(library.root.resolve())) + "?accel_redirect=/_recordings/"
    with running_gateway(
        library.root, [new_key()], work, extra_env=transcode_env(work / "cache"), storage_url=url
    ) as running:
        yield running


def test_renditions_are_not_handed_to_nginx(offload: Gateway) -> None:
    assert get(offload, GSM).header("x-accel-redirect") == "/_recordings/calls/gsm.wav"
    assert get(offload, "/calls/pcm.wav", "?inline=1").header("x-accel-redirect") == "/_recordings/calls/pcm.wav"
    for query, length in (("?inline=1", PCM_SIZE), ("?format=wav", PCM_SIZE)):
        reply = get(offload, GSM, query)
        assert reply.status == 200 and reply.header("x-accel-redirect") is None
        assert len(reply.body) == length and reply.body[:4] == b"RIFF"
    assert json.loads(get(offload, GSM, "?peaks=1").body)["length"] == 1000


def test_renditions_of_s3_objects_with_redirects_on(library: Library, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The source reaches the converter through the storage interface: S3 works as disk does."""
    work = tmp_path_factory.mktemp("transcode-s3")
    short = make_audio(work / "short-gsm.wav", 60, ["-c:a", "gsm_ms"])
    with running_moto(work / "moto") as moto:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket="calls")
        s3.put_object(Bucket="calls", Key="archive/2017/call.wav", Body=short.read_bytes())
        env = gateway_s3_env(moto, transcode_env(work / "cache"))
        with running_gateway(
            library.root, [new_key()], work, extra_env=env, storage_url="s3://calls/archive?redirect=true"
        ) as gateway:
            path = "/2017/call.wav"
            assert get(gateway, path).status == 302
            inline = get(gateway, path, "?inline=1")
            assert inline.status == 200 and inline.header("location") is None
            etag = s3.head_object(Bucket="calls", Key="archive/2017/call.wav")["ETag"]
            assert inline.header("etag") == etag[:-1] + '-wav"'
            assert decoded(inline.body)[4] == pytest.approx(60, abs=0.1)
            assert decoded(get(gateway, path, "?format=opus").body)[4] == pytest.approx(60, abs=0.1)
            part = get(gateway, path, "?inline=1", {"Range": "bytes=1000-1999"})
            assert part.status == 206 and part.body == inline.body[1000:2000]


# -- metrics -------------------------------------------------------------------------------


def test_metrics_count_conversions_their_duration_and_cache_hits(edge: Gateway, library: Library) -> None:
    path = library.add_copy("/calls/g726.wav", "/calls/metrics.wav")
    before = metrics(edge)
    assert get(edge, path, "?inline=1").status == 200
    settled(edge)  # the second request is then a hit on the finished rendition
    assert get(edge, path, "?inline=1", {"Range": "bytes=0-99"}).status == 206
    after = settled(edge)
    assert grown(before, after, "gateway_conversions_total", codec="adpcm_g726", format="wav") == 1
    assert grown(before, after, "gateway_conversion_duration_seconds_count", format="wav") == 1
    assert grown(before, after, "gateway_rendition_cache_total", format="wav", result="miss") == 1
    assert grown(before, after, "gateway_rendition_cache_total", format="wav", result="hit") == 1
    assert grown(before, after, "gateway_response_bytes_total", backend="rendition") == PCM_SIZE + 100
    assert metric(after, "gateway_active_conversions", format="wav") == 0
    assert metric(after, "gateway_conversion_failures_total", format="mp3", reason="undecodable") >= 1
    # The decrypted path is never logged at info level, by conversions neither.
    assert "metrics.wav" not in edge.log.read_text(errors="replace")


# -- concurrency and the limit -----------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Two workers sharing one cache, one conversion at a time on the host, a fifth of a second's queue."""
    work = tmp_path_factory.mktemp("transcode-workers")
    env = transcode_env(
        work / "cache",
        GATEWAY_TRANSCODE_MAX_CONVERSIONS="1",
        GATEWAY_TRANSCODE_QUEUE_SECONDS="0.2",
        GATEWAY_ACCESS_LOG="false",
    )
    with running_gateway(library.root, [new_key()], work, workers=2, extra_env=env) as running:
        yield running


def test_twenty_simultaneous_first_requests_cause_one_conversion(workers: Gateway, library: Library) -> None:
    path = library.add_copy("/calls/g726.wav", "/calls/popular.wav")
    before = metrics(workers)
    start = threading.Barrier(20)

    def fetch(_: int) -> tuple[int, str]:
        start.wait()
        reply = get(workers, path, "?inline=1")
        return reply.status, sha(reply.body)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(fetch, range(20)))
    after = settled(workers)
    assert {status for status, _ in answers} == {200}
    assert len({digest for _, digest in answers}) == 1
    assert grown(before, after, "gateway_conversions_total", codec="adpcm_g726", format="wav") == 1
    lookups = [grown(before, after, "gateway_rendition_cache_total", format="wav", result=r) for r in ("hit", "miss")]
    assert sum(lookups) == 20 and lookups[1] >= 1


def timed_small_downloads(gateway: Gateway, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        assert get(gateway, SMALL).status == 200
        times.append(time.perf_counter() - started)
    return times


def test_past_the_limit_503_with_retry_after_while_small_downloads_go_on(workers: Gateway, library: Library) -> None:
    slow = library.add_copy(GSM, "/calls/slow.wav")  # ten minutes to MP3: seconds of work
    other = library.add_copy("/calls/ima.wav", "/calls/other.wav")
    quiet = timed_small_downloads(workers, 30)
    before = metrics(workers)
    with ThreadPoolExecutor(4) as pool:
        converting = pool.submit(get, workers, slow, "?format=mp3")
        # Liveness bound only: wait until the conversion holds the host's one slot.
        running = poll(
            lambda: metric(metrics(workers), "gateway_active_conversions", format="mp3"), lambda value: value >= 1, 30.0
        )
        assert running == 1 and not converting.done()
        busy = get(workers, other, "?format=opus")
        same = [pool.submit(get, workers, slow, "?format=mp3") for _ in range(2)]  # waiting needs no slot
        loaded = timed_small_downloads(workers, 30)
        still_running = not converting.done()
        first = converting.result()
        waiters = [future.result() for future in same]
    assert busy.status == 503, busy.body
    assert busy.header("retry-after") == "5"
    assert "too many conversions" in busy.body.decode()
    assert first.status == 200 and decoded(first.body)[1] == "mp3"
    assert all(reply.status == 200 and reply.body == first.body for reply in waiters)
    after = metrics(workers)
    assert grown(before, after, "gateway_conversions_refused_total", format="opus") == 1
    assert grown(before, after, "gateway_conversions_total", codec="gsm_ms", format="mp3") == 1
    # Past its deadline nothing stays queued: once the slot is free, the refused request simply succeeds.
    assert get(workers, other, "?format=opus").status == 200
    print(
        f"\n64 KiB downloads, median/max ms: without conversions "
        f"{statistics.median(quiet) * 1000:.1f}/{max(quiet) * 1000:.1f}, during a conversion at the limit "
        f"{statistics.median(loaded) * 1000:.1f}/{max(loaded) * 1000:.1f}"
        f" (conversion still running after them: {still_running})"
    )


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_converter_processes_end_with_the_gateway(library: Library, tmp_path: Path) -> None:
    """SIGTERM to the gateway alone (as systemd's KillMode=mixed sends it): its converters do not outlive it."""
    work = tmp_path / "gateway"
    with running_gateway(library.root, [new_key()], work, extra_env=transcode_env(work / "cache")) as gateway:
        assert get(gateway, "/calls/ima.wav", "?format=wav").status == 200
        spawned = children(gateway.pid)
        assert len(spawned) >= 2  # the pool's processes (and multiprocessing's resource tracker)
        os.kill(gateway.pid, signal.SIGTERM)
        gateway.process.wait(30)
        left = poll(lambda: {pid for pid in spawned if alive(pid)}, lambda pids: not pids, timeout=20.0)
        assert not left, f"still running after the gateway exited: {left}"


@pytest.fixture(scope="module")
def queued(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One conversion at a time, and the default queue: requests past the limit wait their turn."""
    work = tmp_path_factory.mktemp("transcode-queued")
    env = transcode_env(work / "cache", GATEWAY_TRANSCODE_MAX_CONVERSIONS="1")
    with running_gateway(library.root, [new_key()], work, extra_env=env) as running:
        yield running


def test_requests_past_the_limit_wait_their_turn_instead_of_503(queued: Gateway, library: Library) -> None:
    """A browser never retries a media element that got 503: a new call waits for the slot, then plays."""
    paths = [library.add_copy(source, f"/calls/queued-{n}.wav") for n, source in enumerate([GSM, "/calls/ima.wav"] * 3)]
    before = metrics(queued)
    with ThreadPoolExecutor(len(paths)) as pool:
        replies = list(pool.map(lambda path: get(queued, path, "?inline=1"), paths))
    assert [reply.status for reply in replies] == [200] * len(paths)
    after = metrics(queued)
    assert grown(before, after, "gateway_conversions_refused_total", format="wav") == 0
    waited = grown(before, after, "gateway_conversion_wait_seconds_count", format="wav")
    assert waited >= 1  # at least one waited for the slot (with one slot, all but the first did)
    assert metric(after, "gateway_conversions_queued") == 0
