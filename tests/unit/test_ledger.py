"""The listening ledger's parts, without a server: ids, fingerprints, spans and seconds, the outbox, signatures.

The end-to-end behaviour (a real gateway, a real receiver, SIGKILL) is in
e2e/test_ledger_e2e.py; its command line: e2e/test_ledger_cli.py; the README's receivers: ops/test_ledger_receivers.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import re
import struct
import time
import uuid
import wave
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.edge.ledger import sent_spans, view_fields
from gateway.http.plan import plan, representation
from gateway.ledger import Access, Layout, Ledger, Play, ReadAt, layout
from gateway.ledger.audio import heard, union
from gateway.ledger.delivery import Batch, Delivery, backoff
from gateway.ledger.events import encode_accesses, encode_lines, listen_event, new_session
from gateway.ledger.fingerprint import fingerprint, fingerprint_key
from gateway.ledger.helper import Frames, frame
from gateway.ledger.ids import id_millis, new_id
from gateway.ledger.outbox import Chunks, Outbox
from gateway.ledger.signing import BadSignature, signature_header, verify
from gateway.ledger.stats import Stats
from gateway.ledger.writer import Writer
from gateway.links.views import View, view

KEY = bytes(range(32))
SECRET = b"whsec-test-0123456789abcdef"
UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
RATE = 8000  # 8 kHz, mono, 16-bit: 16,000 bytes a second


def pcm_wav(seconds: float, rate: int = RATE, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"\x01\x02" * int(seconds * rate) * channels)
    return buffer.getvalue()


def seconds_at(second: float, rate: int = RATE, channels: int = 1) -> int:
    """The byte offset of `second` in a 16-bit PCM WAV with a 44-byte header."""
    return 44 + int(second * rate) * 2 * channels


# -- ids --------------------------------------------------------------------------


def test_ids_are_unique_time_ordered_and_carry_their_millisecond() -> None:
    now = 1_800_000_000.1235
    ids = [new_id(now + 2 * n / 1000) for n in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(UUID7, event_id) and uuid.UUID(event_id).version == 7 for event_id in ids)
    assert ids == sorted(ids)  # two milliseconds apart each: sorted by time
    assert id_millis(ids[0]) == 1_800_000_000_123
    same_millisecond = {new_id(now) for _ in range(1000)}
    assert len(same_millisecond) == 1000  # 74 random bits each


# -- fingerprints -------------------------------------------------------------------


def test_fingerprint_is_a_keyed_hash_of_the_token_never_the_token_or_the_raw_key() -> None:
    token = "QP7l7cxoVbNW4SX1aQHnWg"
    mark = fingerprint(fingerprint_key(KEY), token)
    assert re.fullmatch(r"[0-9a-f]{32}", mark)
    # What a platform holding the shared key computes for a link it issued:
    derived = hmac.new(KEY, b"storage-gateway/ledger-fingerprint/v1", hashlib.sha256).digest()
    assert mark == hmac.new(derived, token.encode(), hashlib.sha256).hexdigest()[:32]
    assert derived != KEY and mark != hmac.new(KEY, token.encode(), hashlib.sha256).hexdigest()[:32]
    assert fingerprint(fingerprint_key(KEY), token + "==") == mark  # both spellings of one link
    assert fingerprint(fingerprint_key(bytes(32)), token) != mark
    assert fingerprint(fingerprint_key(KEY), token[:-1] + "h") != mark


# -- spans and seconds ---------------------------------------------------------------


def test_span_union_merges_overlapping_and_adjacent_spans_once() -> None:
    assert union([(30, 40), (0, 10), (5, 12), (12, 20), (50, 50), (35, 38)]) == [(0, 20), (30, 40)]
    assert union([]) == []


def test_pcm_layout_maps_bytes_to_samples_exactly() -> None:
    data = pcm_wav(60)
    found = layout(data[:4096], len(data))
    assert found == Layout(44, len(data), 16000.0, 2, exact=True)
    assert found.duration == 60.0
    # Two separate 10-second ranges of a 60-second WAV: 20 seconds.
    ranges = [(seconds_at(10), seconds_at(20)), (seconds_at(30), seconds_at(40))]
    assert heard(ranges, found) == (20.0, [(10.0, 20.0), (30.0, 40.0)])
    # Overlaps counted once; the header is no audio; a frame counts only when all its bytes were sent.
    assert heard([*ranges, (seconds_at(12), seconds_at(18)), (0, 44)], found)[0] == 20.0
    assert heard([(seconds_at(1) + 1, seconds_at(2) + 1)], found)[0] == pytest.approx(1 - 1 / RATE)
    assert heard([(0, len(data))], found)[0] == 60.0


def test_stereo_and_extensible_wav_layouts() -> None:
    stereo = pcm_wav(2, rate=16000, channels=2)
    found = layout(stereo, len(stereo))
    assert isinstance(found, Layout) and found.exact and found.frame == 4 and found.duration == 2.0
    # WAVE_FORMAT_EXTENSIBLE with a PCM sub-format, after a LIST chunk.
    fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 16000, 2, 16, 22, 16, 4) + b"\x01\x00" + bytes(14)
    listing = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd size: padded
    samples = bytes(16000)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + listing + b"data" + struct.pack("<I", 16000)
    data = b"RIFF" + struct.pack("<I", len(body) + len(samples)) + body + samples
    found = layout(data, len(data))
    assert isinstance(found, Layout) and found.exact and found.stop == len(data) and found.duration == 1.0


def test_compressed_wav_is_estimated_from_its_byte_rate() -> None:
    # GSM 6.10 (wav49): 65 bytes per 320 samples, 1625 bytes a second on average.
    fmt = struct.pack("<HHIIHHHH", 0x31, 1, 8000, 1625, 65, 0, 2, 320)
    audio = bytes(1625 * 10)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(audio))
    data = b"RIFF" + struct.pack("<I", len(body) + len(audio)) + body + audio
    found = layout(data, len(data))
    assert isinstance(found, Layout) and not found.exact and found.duration == 10.0
    assert heard([(found.start, found.start + 1625 * 3)], found)[0] == 3.0


def _mp3_frame(padding: int = 0) -> bytes:
    # MPEG-1 layer III, 32 kbit/s, 8 kHz is not MPEG-1: use 32 kHz mono, 32 kbit/s: 144 * 32000 / 32000 = 144 bytes.
    header = bytes([0xFF, 0xFB, 0x18 | (padding << 1), 0xC0])
    return header + bytes(140)


def test_mp3_is_estimated_from_its_bitrate_or_its_xing_frame_count() -> None:
    frames = _mp3_frame() * 100
    found = layout(frames, len(frames))
    assert isinstance(found, Layout) and not found.exact and found.bytes_per_second == 4000.0
    # A Xing header in the first frame: the frame count says the duration (100 frames of 1152 samples at 32 kHz).
    xing = bytearray(_mp3_frame())
    xing[4 + 17 : 4 + 17 + 12] = b"Xing" + struct.pack(">II", 1, 100)
    data = bytes(xing) + frames[144:]
    found = layout(data, len(data))
    assert isinstance(found, Layout) and found.duration == pytest.approx(100 * 1152 / 32000)
    # An ID3v2 tag longer than what was read: the layout asks for the bytes after it.
    tag_size = 100_000
    tag = b"ID3\x04\x00\x00" + bytes([(tag_size >> 21) & 127, (tag_size >> 14) & 127, (tag_size >> 7) & 127,
                                      tag_size & 127])  # fmt: skip
    tagged = tag + bytes(tag_size) + frames
    asked = layout(tagged[:65536], len(tagged))
    assert asked == ReadAt(10 + tag_size)
    found = layout(tagged[asked.offset :], len(tagged), asked.offset)
    assert isinstance(found, Layout) and found.start == 10 + tag_size


def test_flac_is_estimated_from_streaminfo_and_unknown_formats_have_no_layout() -> None:
    info = bytearray(34)
    info[10:18] = ((8000 << 44) | (0 << 41) | (15 << 36) | 80000).to_bytes(8, "big")  # 8 kHz, mono, 16 bit, 10 s
    data = b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(info) + bytes(20000)
    found = layout(data, len(data))
    assert isinstance(found, Layout) and found.start == 42 and found.duration == pytest.approx(10.0)
    assert layout(b"OggS" + bytes(100), 104) is None
    assert layout(b"RIFF\x10\x00\x00\x00WAVEjunk", 20) is None
    assert layout(b"", 0) is None


def test_spans_sent_follow_the_plan_and_the_bytes_that_went_out() -> None:
    rep = representation("audio/wav", '"e"', 0, "private")
    whole = plan("GET", {}, rep, 1000, 16)
    assert sent_spans(whole, 1000, True) == (((0, 1000),), True)
    assert sent_spans(whole, 300, True) == (((0, 300),), False)  # the client went away
    ranged = plan("GET", {b"range": b"bytes=100-199"}, rep, 1000, 16)
    assert sent_spans(ranged, 100, True) == (((100, 200),), True)
    several = plan("GET", {b"range": b"bytes=0-9,500-599"}, rep, 1000, 16)
    assert sent_spans(several, several.length, True) == (((0, 10), (500, 600)), True)
    head = len(several.parts[0][0])
    assert sent_spans(several, head + 5, True) == (((0, 5),), False)
    assert sent_spans(plan("HEAD", {}, rep, 1000, 16), 0, True) == ((), True)
    assert sent_spans(None, 9, True) == ((), True)  # a refusal
    assert sent_spans(plan("GET", {b"range": b"bytes=5000-"}, rep, 1000, 16), 0, True) == ((), True)  # 416


def test_the_view_in_events_says_inline_format_and_rendition() -> None:
    inline, mp3, peaks = (
        view(params, True, True)
        for params in ({"inline": "1"}, {"format": "mp3", "filename": "call.wav"}, {"peaks": "1", "pixels": "500"})
    )
    assert isinstance(inline, View) and isinstance(mp3, View) and isinstance(peaks, View)
    assert view_fields(inline, True) == {"inline": True, "rendition": True}
    assert view_fields(mp3, True) == {"inline": False, "format": "mp3", "filename": "call.wav", "rendition": True}
    assert view_fields(peaks, True)["pixels"] == 500  # fmt: skip


# -- sessions and the outbox -----------------------------------------------------------


def _access(began: float, ranges: tuple[tuple[int, int], ...], *, inline: bool = True, client: str = "203.0.113.7",
            size: int = 960_044, token: str = "QP7l7cxoVbNW4SX1aQHnWg") -> Access:  # fmt: skip
    sent = sum(stop - start for start, stop in ranges)
    play = Play('"e-1"', Layout(44, size, 16000.0, 2, True)) if inline else None
    shown = {"inline": inline, "rendition": False}
    return Access(began, 0.01, "GET", 206, sent, token, "/300/call.wav", "file:///r", "disk", size, ranges, True,
                  shown, False, client, "test-agent", None, None, play)  # fmt: skip


def test_access_events_carry_the_fields_and_never_the_token() -> None:
    access = _access(1_800_000_000.5, ((seconds_at(10), seconds_at(20)),))
    lines, count, plays = encode_accesses([access], lambda token: "f" * 32, "replica-1")
    event = json.loads(lines)
    assert count == 1 and plays == [("f" * 32, access)]  # an inline play: for its session
    assert access.token.encode() not in lines and lines.count(b"\n") == 1  # one event a line in the outbox
    assert event["type"] == "access" and event["time"] == "2027-01-15T08:00:00.500Z"
    assert event["ranges"] == [[seconds_at(10), seconds_at(20)]] and event["bytes"] == 160_000
    assert {"id", "path", "storage", "status", "bytes", "ranges", "view", "fingerprint", "signed", "client",
            "user_agent", "complete", "replica"} <= event.keys()  # fmt: skip
    # Whatever a client sends is escaped: the event is JSON, and these strings come back as they were sent.
    strange = 'quote " back\\slash \x00\x1f é \u2028'
    odd = _access(1_800_000_000.5, (), client=None)._replace(user_agent=strange, path=None, view=None)
    parsed = json.loads(encode_accesses([odd], lambda token: "f" * 32, "r")[0])
    assert parsed["user_agent"] == odd.user_agent and parsed["path"] is None and parsed["client"] is None
    assert parsed["view"] is None and parsed["ranges"] == [] and parsed["complete"] is True


def test_plays_of_one_link_by_one_client_make_one_session_until_idle(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, 1000)
    t = 1_800_000_000.0
    plays = [_access(t, ((seconds_at(10), seconds_at(20)),)), _access(t + 5, ((seconds_at(30), seconds_at(40)),)),
             _access(t + 6, ((seconds_at(15), seconds_at(18)),))]  # fmt: skip
    for access in plays:
        outbox.append(b"", 0, [("key", access, "f" * 32)], 300, "replica-1")
    assert outbox.sweep(t + 6 + 299, 300).listen == 0  # not idle yet
    assert outbox.sweep(t + 6 + 301, 300).listen == 1
    (event,) = _events(outbox)
    assert event["type"] == "listen" and event["seconds"] == 20.0 and event["estimated"] is False
    assert event["heard"] == [[10.0, 20.0], [30.0, 40.0]] and event["plays"] == 3 and event["duration"] == 60.0
    assert event["time"] < event["ended"]
    # A play after the idle time starts a new session, and closes the old one at once.
    outbox.append(b"", 0, [("key", _access(t + 1000, ((0, 1000),)), "f" * 32)], 300, "replica-1")
    outbox.append(b"", 0, [("key", _access(t + 2000, ((0, 1000),)), "f" * 32)], 300, "replica-1")
    assert len(_events(outbox)) == 2
    outbox.close()


def test_a_session_of_unknown_layout_reports_bytes_but_no_seconds() -> None:
    access = _access(1_800_000_000.0, ((0, 5000),))._replace(play=Play('"e-1"', None))
    event = listen_event(new_session(access, "f" * 32, "r"))
    assert event["seconds"] is None and event["heard"] is None and event["bytes"] == 5000


def _events(outbox: Outbox, after: int = 0) -> list[dict[str, object]]:
    chunks = outbox.batch(after, 10_000)
    return [] if chunks is None else json.loads(chunks.body)["events"]


def test_the_outbox_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, 5)
    dropped = 0
    for n in range(12):
        dropped += outbox.append(encode_lines([{"n": n}]), 1, [], 300, "r").dropped
    assert dropped == 7
    assert [event["n"] for event in _events(outbox)] == [7, 8, 9, 10, 11]
    assert outbox.pending() == 5
    # Events are kept in chunks (a commit each); the oldest chunk is cut when only part of it must go.
    assert outbox.append(encode_lines({"n": n} for n in range(12, 15)), 3, [], 300, "r").dropped == 3
    assert [event["n"] for event in _events(outbox)] == [10, 11, 12, 13, 14]
    outbox.close()


def test_the_writer_counts_what_the_bound_drops_and_logs_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stats = Stats()
    writer = Writer(tmp_path, "r", 300, 3, 500, stats)
    for n in range(10):
        records = [_access(1_800_000_000.0 + n, ((0, 10),), inline=False)]
        writer.write(*encode_accesses(records, lambda token: "f" * 32, "r"))  # a commit each
    writer.close()
    report = stats.take()
    assert report is not None and report["counts"] == {"recorded:access": 10, "dropped": 7}
    assert stats.take() is None  # taken once
    assert sum("dropping events" in record.getMessage() for record in caplog.records) == 1
    outbox = Outbox(tmp_path, 3)
    assert [event["time"] for event in _events(outbox)] == [f"2027-01-15T08:00:0{n}.000Z" for n in (7, 8, 9)]
    outbox.close()


def test_a_worker_hands_its_events_to_its_helper_process_which_commits_and_reports_them(tmp_path: Path) -> None:
    """The worker's side and a real helper process, without a server: recorded, committed, counted."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    directory = tmp_path / "ledger"
    delivery = Delivery(("http://127.0.0.1:9/",), SECRET, 100, 1.0, 0.05, 0.1)  # nothing listens: nothing delivered
    ledger = Ledger(directory=directory, shared_key=KEY, replica="r", idle_seconds=300, max_events=1000,
                    delivery=delivery)  # fmt: skip
    recorded = sample("gateway_ledger_events_total", type="access")

    async def run() -> None:
        await ledger.start()
        for n in range(25):
            ledger.record(_access(1_800_000_000.0 + n, ((0, 10),), inline=n % 2 == 0, client=f"198.51.100.{n % 2}"))
            await asyncio.sleep(0.01)
        await ledger.stop()  # hands everything over: the helper commits it before it exits

    asyncio.run(run())
    assert sample("gateway_ledger_events_total", type="access") - recorded == 25
    assert directory.stat().st_mode & 0o777 == 0o700
    outbox = Outbox(directory, 1000)
    events = _events(outbox)
    outbox.close()
    assert [event["type"] for event in events] == ["access"] * 25
    assert [event["time"] for event in events] == sorted(event["time"] for event in events)
    assert all(event["fingerprint"] == fingerprint(fingerprint_key(KEY), "QP7l7cxoVbNW4SX1aQHnWg") for event in events)


def test_frames_carry_messages_whole_however_the_stream_is_cut() -> None:
    stream = frame({"a": 1}) + frame([_access(1.0, ())]) + frame("end")
    frames = Frames()
    got = []
    for at in range(0, len(stream), 7):
        got += frames.feed(stream[at : at + 7])
    assert got == [{"a": 1}, [_access(1.0, ())], "end"]


def test_cursors_acknowledgements_and_pending(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, 100)
    urls = ("http://a/", "http://b/")
    outbox.append(b'{"n":1}\n{"n":2}\n', 2, [], 300, "r")
    outbox.append(b'{"n":3}\n{"n":4}\n', 2, [], 300, "r")
    assert outbox.cursor(urls[0]) == 0 and outbox.cursor(urls[1]) == 0
    outbox.acknowledged(urls[0], 4, urls)
    assert outbox.pending() == 4  # b has none of them yet
    outbox.acknowledged(urls[1], 2, urls)
    assert outbox.pending() == 2 and [event["n"] for event in _events(outbox, 2)] == [3, 4]
    outbox.forget_cursors(urls[:1])  # b no longer configured: nothing waits for it
    assert outbox.pending() == 0
    outbox.append(b'{"n":5}\n', 1, [], 300, "r")
    assert outbox.cursor("http://c/") == 4  # a new URL gets what is kept, from the oldest on
    outbox.close()


def test_deliveries_are_whole_chunks_up_to_the_batch_size(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, 100, chunk=2)
    outbox.append(encode_lines({"n": n} for n in range(1, 6)), 5, [], 300, "r")  # chunks of 1-2, 3-4, 5
    first = outbox.batch(0, 3)
    assert first is not None and (first.first, first.last, first.count) == (1, 2, 2)
    both = outbox.batch(0, 4)
    assert both is not None and [event["n"] for event in json.loads(both.body)["events"]] == [1, 2, 3, 4]
    assert outbox.whole(both)
    small = Outbox(tmp_path, 3, chunk=2)
    small.append(b'{"n":6}\n', 1, [], 300, "r")  # the bound: 6 events kept, 3 allowed
    assert not outbox.whole(both)  # a retry of it would send dropped events: it is made again
    assert [event["n"] for event in _events(outbox)] == [4, 5, 6]
    small.close()
    outbox.close()


def test_batches_have_a_key_from_their_body_and_a_json_body() -> None:
    chunks = Chunks(1, 2, 2, [b'{"n":1}\n', b'{"n":2}\n'])
    batch = Batch.of(chunks)
    assert json.loads(batch.body) == {"events": [{"n": 1}, {"n": 2}]}
    assert (
        batch.key == Batch.of(Chunks(1, 2, 2, list(chunks.texts))).key != Batch.of(Chunks(1, 1, 1, [b'{"n":1}\n'])).key
    )
    assert re.fullmatch(r"[0-9a-f]{32}", batch.key)


def test_backoff_doubles_with_jitter_up_to_its_cap_and_honours_retry_after() -> None:
    for attempt, full in ((1, 1.0), (2, 2.0), (5, 16.0), (12, 300.0), (100, 300.0)):
        delays = [backoff(attempt, 1.0, 300.0) for _ in range(200)]
        assert all(full / 2 <= delay <= full for delay in delays)
        assert len(set(delays)) > 100  # jittered: retries of many senders never march in step
    assert backoff(1, 1.0, 300.0, retry_after=120) == 120
    assert backoff(1, 1.0, 300.0, retry_after=9999) == 300


# -- signatures -------------------------------------------------------------------------


def test_signature_verify_accepts_the_delivery_and_rejects_any_change() -> None:
    body = b'{"events":[{"id":"01A","type":"access"}]}'
    now = 1_800_000_000
    header = signature_header(SECRET, body, now)
    assert re.fullmatch(r"t=1800000000,v1=[0-9a-f]{64}", header)
    assert verify(SECRET, header, body, now=now + 10) == now
    with pytest.raises(BadSignature, match="does not match"):
        verify(SECRET, header, body.replace(b"access", b"listen"), now=now)
    changed_time = header.replace("t=1800000000", "t=1800000001")
    with pytest.raises(BadSignature, match="does not match"):
        verify(SECRET, changed_time, body, now=now)
    with pytest.raises(BadSignature, match="does not match"):
        verify(b"another-secret-0123456789", header, body, now=now)
    with pytest.raises(BadSignature, match="outside"):
        verify(SECRET, header, body, tolerance=300, now=now + 301)  # a replay after the window
    for broken in ("", "v1=00", "t=soon,v1=00", "t=1800000000"):
        with pytest.raises(BadSignature):
            verify(SECRET, broken, body, now=now)


def _signed(tmp_path: Path, body: bytes, at: int | None = None) -> tuple[Path, str]:
    path = tmp_path / "delivery.json"
    path.write_bytes(body)
    return path, signature_header(SECRET, body, int(time.time()) if at is None else at)


# -- configuration ----------------------------------------------------------------------


def test_the_ledger_is_off_by_default_and_on_with_webhook_urls(tmp_path: Path) -> None:
    env = {"GATEWAY_KEY": "00" * 32, "GATEWAY_STORAGE": tmp_path.as_uri()}
    assert not load_settings(None, env).ledger.enabled
    settings = load_settings(None, {**env, "GATEWAY_WEBHOOK_URLS": "https://a.example/hook, http://b.example:8080/x",
                                    "GATEWAY_WEBHOOK_SECRET": SECRET.decode(),
                                    "GATEWAY_LEDGER_DIR": str(tmp_path / "ledger")})  # fmt: skip
    ledger = settings.ledger
    assert ledger.enabled and ledger.webhook_urls == ("https://a.example/hook", "http://b.example:8080/x")
    assert ledger.session_idle_seconds == 300.0 and ledger.dir == tmp_path / "ledger"
    assert SECRET.decode() not in repr(settings)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"GATEWAY_WEBHOOK_URLS": "https://a.example/hook"}, "GATEWAY_WEBHOOK_SECRET: required"),
        ({"GATEWAY_WEBHOOK_URLS": "ftp://a.example/", "GATEWAY_WEBHOOK_SECRET": "s" * 16}, "not an http(s) URL"),
        ({"GATEWAY_WEBHOOK_URLS": "https://a.example/", "GATEWAY_WEBHOOK_SECRET": "short"}, "at least 16"),
        ({"GATEWAY_LEDGER_SESSION_IDLE_SECONDS": "0"}, "more than 0"),
        ({"GATEWAY_LEDGER_MAX_EVENTS": "0"}, "outside"),
    ],
)
def test_bad_ledger_settings_stop_the_start(tmp_path: Path, extra: dict[str, str], words: str) -> None:
    env = {"GATEWAY_KEY": "00" * 32, "GATEWAY_STORAGE": tmp_path.as_uri(), **extra}
    with pytest.raises(ConfigError) as error:
        load_settings(None, env)
    assert words in str(error.value)
