"""The listening ledger end to end: real `serve` processes, a real webhook receiver that checks signatures itself.

The receiver is an HTTP server in a thread of the test. It verifies every
delivery's `X-Gateway-Signature` with its own code (HMAC-SHA256 over
`"<t>." + body`, compared in constant time, within a replay window), keeps
what arrived, and can answer 500 first, hang, or not be there at all.
Waits are bounded polls (liveness), never timing assertions.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import signal
import threading
import time
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.http import HOST, Reply, request
from support.keys import new_key
from support.ops import metric, scrape
from support.polling import poll
from support.processes import Gateway, free_port, running_gateway, start_gateway, stop_process, wait_exit
from support.recordings import make_audio
from support.storage import Storage

from gateway.links.signing import LinkSigner

SECRET = "whsec-e2e-" + "0123456789abcdef"
WAIT = 30.0  # seconds any poll may take (a liveness bound)
P64K = "/ledger/recording-64k.mp3"
PWAV = "/ledger/call-60s.wav"  # 60 s of 16-bit PCM, 8 kHz mono: 16,000 bytes a second after a 44-byte header
PGSM = "/ledger/call-gsm.wav"  # GSM 6.10: inline links get the PCM WAV rendition
PREVOKED = "/ledger/revoked.mp3"
PMISSING = "/ledger/missing.mp3"


def at(second: float) -> int:
    """The byte of a 16-bit 8 kHz mono PCM WAV (44-byte header) where `second` begins."""
    return 44 + int(second * 8000) * 2


def seconds_range(start: float, stop: float) -> str:
    return f"bytes={at(start)}-{at(stop) - 1}"


# -- the receiver -----------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    valid: bool  # the signature checked out, by the receiver's own code
    status: int  # what the receiver answered

    @property
    def events(self) -> list[dict[str, object]]:
        return json.loads(self.body)["events"]


def signature_holds(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The receiver's own check, as a platform would write it."""
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    t = fields.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode())


class Receiver:
    """A webhook receiver on 127.0.0.1 that verifies signatures and keeps every delivery."""

    def __init__(self, secret: str, port: int | None = None) -> None:
        self.secret = secret.encode()
        self.port = port or free_port()
        self.deliveries: list[Delivery] = []
        self.fail_first = 0  # answer 500 to this many deliveries first
        self.hanging = 0  # deliveries being held unanswered now
        self._hang = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hooks/ledger?source=gateway"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # the head and the body in one write (no delayed-ACK stall)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver._hang.is_set():
                    with receiver._lock:
                        receiver.hanging += 1
                    receiver._released.wait(WAIT * 4)
                    with receiver._lock:
                        receiver.hanging -= 1
                    self.close_connection = True
                    return  # the gateway gave up on this one long ago
                valid = signature_holds(receiver.secret, self.headers.get("X-Gateway-Signature", ""), body)
                with receiver._lock:
                    status = 500 if receiver.fail_first > 0 else 200 if valid else 400
                    receiver.fail_first = max(0, receiver.fail_first - 1)
                    receiver.deliveries.append(Delivery(dict(self.headers), body, valid, status))
                answer = b'{"ok":true}' if status == 200 else b'{"error":"try again"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def hang(self) -> None:
        self._hang.set()

    def release(self) -> None:
        """Answer normally from now on (the deliveries held so far are dropped)."""
        self._hang.clear()
        self._released.set()

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.status == 200]

    def events(self, agent_prefix: str = "", kind: str | None = None) -> dict[str, dict[str, object]]:
        """Every event accepted, deduplicated by id (a receiver must do so: delivery is at least once)."""
        found = {}
        for delivery in self.accepted():
            for event in delivery.events:
                if (kind is None or event["type"] == kind) and str(event.get("user_agent") or "").startswith(
                    agent_prefix
                ):
                    found[str(event["id"])] = event
        return found

    def by_agent(self, agent_prefix: str) -> dict[str, dict[str, object]]:
        """Accepted access events by user agent (each test request has its own)."""
        return {str(e["user_agent"]): e for e in self.events(agent_prefix, "access").values()}


@contextlib.contextmanager
def receiving(port: int | None = None) -> Iterator[Receiver]:
    receiver = Receiver(SECRET, port).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def ledger_env(url: str, directory: Path, **extra: str) -> dict[str, str]:
    """The ledger on, with a short session idle time and a fast backoff (tests need not wait minutes)."""
    return {
        "GATEWAY_WEBHOOK_URLS": url,
        "GATEWAY_WEBHOOK_SECRET": SECRET,
        "GATEWAY_LEDGER_DIR": str(directory / "ledger"),
        "GATEWAY_LEDGER_SESSION_IDLE_SECONDS": "1",
        "GATEWAY_WEBHOOK_RETRY_SECONDS": "0.05",
        "GATEWAY_WEBHOOK_MAX_RETRY_SECONDS": "0.2",
        "GATEWAY_WEBHOOK_TIMEOUT": "1",
        "GATEWAY_TRANSCODE_CACHE_DIR": str(directory / "renditions"),
        **extra,
    }


def expected_fingerprint(key: bytes, token: str) -> str:
    """What a platform holding the shared key computes for a link it issued (README, "The listening ledger")."""
    derived = hmac.new(key, b"storage-gateway/ledger-fingerprint/v1", hashlib.sha256).digest()
    return hmac.new(derived, token.rstrip("=").encode(), hashlib.sha256).hexdigest()[:32]


def get(gateway: Gateway, target: str, agent: str, method: str = "GET", **headers: str) -> Reply:
    """One request with its own User-Agent: each test request is found among the events by it."""
    return request(gateway.base_url, target, method, {"User-Agent": agent, **headers}, timeout=10)


# -- fixtures -----------------------------------------------------------------------


def _pcm_wav(seconds: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x10\x00\xf0\xff" * (seconds * 4000))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(storage: Storage) -> Storage:
    storage.add(P64K, os.urandom(64 * 1024))
    storage.add(PWAV, _pcm_wav(60))
    storage.add(PREVOKED, os.urandom(1000))
    make_audio(storage.file(PGSM), 30, ["-c:a", "gsm_ms"])
    return storage


@dataclass
class Delivering:
    gateway: Gateway
    receiver: Receiver


@pytest.fixture(scope="module")
def delivering(files: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivering]:
    """`serve --workers 2` with the ledger on, delivering to a receiver that is up."""
    workdir = tmp_path_factory.mktemp("ledger")
    revoked = workdir / "revoked.txt"
    revoked.write_text(PREVOKED + "\n")
    with receiving() as receiver:
        env = ledger_env(receiver.url, workdir, GATEWAY_REVOCATION_FILE=str(revoked), GATEWAY_TRUSTED_PROXIES=HOST)
        with running_gateway(files.root, [new_key()], workdir, workers=2, extra_env=env) as gateway:
            yield Delivering(gateway, receiver)


# -- the tests ----------------------------------------------------------------------


def test_every_event_arrives_signed_with_its_fields(delivering: Delivering) -> None:
    gateway, receiver = delivering.gateway, delivering.receiver
    key, token = gateway.key, gateway.token(P64K)
    signer = LinkSigner([key])
    expired = "?" + signer.sign(token, {"exp": str(int(time.time()) - 60)})
    tampered = "?" + signer.sign(token, {"exp": str(int(time.time()) + 600)})[:-2] + "xx"
    answered = {
        "fields/whole": (get(gateway, "/" + token, "fields/whole", **{"X-Forwarded-For": "203.0.113.9"}), 200),
        "fields/range": (get(gateway, "/" + token, "fields/range", Range="bytes=100-199"), 206),
        "fields/multi": (get(gateway, "/" + token, "fields/multi", Range="bytes=0-9,1000-1009"), 206),
        "fields/head": (get(gateway, "/" + token, "fields/head", "HEAD"), 200),
        "fields/revoked": (get(gateway, gateway.target(PREVOKED), "fields/revoked"), 410),
        "fields/missing": (get(gateway, gateway.target(PMISSING), "fields/missing"), 404),
        "fields/expired": (get(gateway, "/" + token + expired, "fields/expired"), 410),
        "fields/tampered": (get(gateway, "/" + token + tampered, "fields/tampered"), 403),
    }
    for agent, (reply, status) in answered.items():
        assert reply.status == status, agent
    # Not recorded: garbage tokens (with or without a signature), other methods, health and metrics.
    garbage = "/" + "A" * 30
    assert get(gateway, garbage, "fields/garbage").status == 404
    assert get(gateway, garbage + "?exp=1&sig=abc", "fields/garbage-signed").status == 403
    assert get(gateway, "/" + token, "fields/post", "POST").status == 405
    assert get(gateway, "/healthz", "fields/health").status == 200
    assert get(gateway, "/metrics", "fields/metrics").status == 200

    arrived = poll(lambda: receiver.by_agent("fields/"), lambda got: len(got) >= len(answered), WAIT)
    assert set(arrived) == set(answered)  # every answer for a link, nothing for garbage, health or metrics
    for delivery in receiver.deliveries:
        assert delivery.valid, delivery.headers
        assert re.fullmatch(r"[0-9a-f]{32}", delivery.headers["Idempotency-Key"])
        assert delivery.headers["Content-Type"] == "application/json"
        assert token not in delivery.body.decode()  # the fingerprint, never the token

    whole = arrived["fields/whole"]
    assert uuid.UUID(str(whole["id"])).version == 7  # a UUIDv7: time-ordered
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(whole["time"]))
    assert whole["type"] == "access" and whole["method"] == "GET"
    assert whole["path"] == P64K and whole["storage"] == files_uri(gateway) and whole["backend"] == "disk"
    assert (whole["status"], whole["bytes"], whole["size"], whole["ranges"]) == (200, 65536, 65536, [[0, 65536]])
    assert whole["complete"] is True and whole["reason"] is None and whole["signed"] is False
    assert whole["view"] == {"inline": False, "rendition": False}
    assert whole["fingerprint"] == expected_fingerprint(key, token)
    assert whole["client"] == "203.0.113.9"  # X-Forwarded-For from a trusted proxy
    assert whole["user_agent"] == "fields/whole" and whole["replica"]
    assert arrived["fields/range"]["ranges"] == [[100, 200]] and arrived["fields/range"]["bytes"] == 100
    assert arrived["fields/multi"]["ranges"] == [[0, 10], [1000, 1010]]
    assert arrived["fields/head"]["bytes"] == 0 and arrived["fields/head"]["ranges"] == []
    assert arrived["fields/head"]["method"] == "HEAD" and arrived["fields/range"]["client"] == HOST
    for agent, reason in (("fields/revoked", "revoked"), ("fields/missing", "not_found"),
                          ("fields/expired", "expired"), ("fields/tampered", "signature")):  # fmt: skip
        event = arrived[agent]
        assert event["reason"] == reason and event["ranges"] == [], agent
    assert arrived["fields/revoked"]["path"] == PREVOKED
    assert arrived["fields/missing"]["path"] == PMISSING and arrived["fields/missing"]["storage"] is None
    assert arrived["fields/expired"]["signed"] is True and arrived["fields/tampered"]["signed"] is True
    assert arrived["fields/expired"]["fingerprint"] == whole["fingerprint"]  # the same link
    ids = [str(event["id"]) for event in arrived.values()]
    assert len(set(ids)) == len(ids)


def files_uri(gateway: Gateway) -> str:
    return gateway.root.resolve().as_uri()


def test_listen_counts_two_10s_ranges_of_a_60s_wav_as_20_seconds(delivering: Delivering) -> None:
    gateway, receiver = delivering.gateway, delivering.receiver
    target = gateway.target(PWAV)
    client = {"X-Forwarded-For": "203.0.113.50"}
    for number, (start, stop) in enumerate(((10, 20), (30, 40), (12, 18))):  # the third overlaps the first
        reply = get(gateway, target + "?inline=1", f"listen/{number}", Range=seconds_range(start, stop), **client)
        assert reply.status == 206 and len(reply.body) == at(stop) - at(start)
    assert get(gateway, target, "listen/download", **client).status == 200  # a download: an access, not a listen

    mark = expected_fingerprint(gateway.key, gateway.token(PWAV))

    def sessions() -> list[dict[str, object]]:
        return [e for e in receiver.events(kind="listen").values() if e["fingerprint"] == mark]

    (listen,) = poll(sessions, lambda found: len(found) >= 1, WAIT)
    assert listen["seconds"] == 20.0 and listen["estimated"] is False
    assert listen["heard"] == [[10.0, 20.0], [30.0, 40.0]] and listen["duration"] == 60.0
    assert listen["plays"] == 3 and listen["bytes"] == 2 * 160_000 + 96_000  # 10 s + 10 s + 6 s sent
    assert listen["client"] == "203.0.113.50" and listen["path"] == PWAV
    assert listen["view"] == {"inline": True, "rendition": False}
    assert listen["ranges"] == [[at(10), at(20)], [at(30), at(40)]]
    assert str(listen["time"]) < str(listen["ended"])
    accesses = poll(lambda: receiver.by_agent("listen/"), lambda got: len(got) >= 4, WAIT)
    assert accesses["listen/download"]["view"] == {"inline": False, "rendition": False}
    assert len(sessions()) == 1


def test_listen_seconds_of_an_inline_rendition_come_from_its_pcm_layout(delivering: Delivering) -> None:
    gateway, receiver = delivering.gateway, delivering.receiver
    reply = get(gateway, gateway.target(PGSM) + "?inline=1", "rendition/0", Range=seconds_range(5, 10))
    assert reply.status == 206 and reply.header("Content-Type") == "audio/wav"
    mark = expected_fingerprint(gateway.key, gateway.token(PGSM))
    found = poll(
        lambda: [e for e in receiver.events(kind="listen").values() if e["fingerprint"] == mark],
        lambda found: len(found) >= 1,
        WAIT,
    )
    (listen,) = found
    assert listen["seconds"] == 5.0 and listen["estimated"] is False and listen["heard"] == [[5.0, 10.0]]
    assert listen["duration"] == pytest.approx(30.0, abs=0.05)
    assert listen["view"] == {"inline": True, "rendition": True}
    (access,) = receiver.by_agent("rendition/").values()
    assert access["backend"] == "rendition" and access["ranges"] == [[at(5), at(10)]]


def test_a_receiver_answering_500_first_is_retried_with_the_same_key_and_body(delivering: Delivering) -> None:
    gateway, receiver = delivering.gateway, delivering.receiver
    before = metric(scrape(gateway.base_url), "gateway_ledger_failures_total", reason="server")
    already = len(receiver.deliveries)
    receiver.fail_first = 1
    assert get(gateway, gateway.target(P64K), "retry/0").status == 200
    poll(lambda: receiver.by_agent("retry/"), lambda got: len(got) == 1, WAIT)
    tried = receiver.deliveries[already:]
    failed = next(n for n, delivery in enumerate(tried) if delivery.status == 500)
    first, again = tried[failed], tried[failed + 1]
    assert again.status == 200 and first.valid and again.valid
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    assert first.body == again.body
    after = poll(
        lambda: metric(scrape(gateway.base_url), "gateway_ledger_failures_total", reason="server"),
        lambda value: value > before,
        WAIT,
    )
    assert after == before + 1


def test_a_hung_receiver_does_not_slow_100_downloads(files: Storage, tmp_path: Path) -> None:
    with receiving() as receiver, running_gateway(
        files.root, [new_key()], tmp_path, extra_env=ledger_env(receiver.url, tmp_path)
    ) as gateway:  # fmt: skip
        receiver.hang()
        target = gateway.target(P64K)
        assert get(gateway, target, "hung/first").status == 200
        poll(lambda: receiver.hanging, lambda held: held >= 1, WAIT)  # a delivery is hanging now
        expected = files.data(P64K)
        for number in range(100):  # the one worker serves them while its helper waits for the receiver
            reply = request(gateway.base_url, target, headers={"User-Agent": f"hung/{number}"}, timeout=10)
            assert reply.status == 200 and reply.body == expected
        assert receiver.hanging >= 1 and not receiver.accepted()  # it hung all along
        timeouts = poll(
            lambda: metric(scrape(gateway.base_url), "gateway_ledger_failures_total", reason="timeout"),
            lambda value: value >= 1,
            WAIT,
        )
        assert timeouts >= 1  # each attempt bounded by its timeout, then retried
        receiver.release()
        arrived = poll(lambda: receiver.by_agent("hung/"), lambda got: len(got) >= 101, WAIT)
        assert set(arrived) == {"hung/first", *(f"hung/{n}" for n in range(100))}


def test_sigkill_and_restart_with_the_receiver_down_lose_nothing(files: Storage, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there until the gateway has been killed and started again
    url = f"http://{HOST}:{port}/hooks/ledger"
    (tmp_path / "metrics").mkdir()  # given, so a killed run leaves nothing behind outside tmp_path
    env = ledger_env(url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    keys = [new_key()]
    gateway = start_gateway(files.root, keys, tmp_path / "first", workers=2, extra_env=env)
    try:
        agents = [f"kill/{n}" for n in range(20)]
        for agent in agents:
            assert get(gateway, gateway.target(P64K), agent).status == 200
        for number, (start, stop) in enumerate(((0, 5), (20, 25))):
            agent = f"kill/play-{number}"
            assert (
                get(gateway, gateway.target(PWAV) + "?inline=1", agent, Range=seconds_range(start, stop)).status == 206
            )
            agents.append(agent)

        def recorded() -> float:
            return metric(scrape(gateway.base_url), "gateway_ledger_events_total", type="access")

        assert poll(recorded, lambda n: n >= len(agents), WAIT) == len(agents)  # committed to the outbox
        failures = poll(
            lambda: metric(scrape(gateway.base_url), "gateway_ledger_failures_total", reason="connection"),
            lambda value: value >= 1,
            WAIT,
        )
        assert failures >= 1  # the receiver is down: deliveries fail and are retried
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(gateway.pid, signal.SIGKILL)  # every process of it, with no chance to flush anything
        assert wait_exit(gateway.process, 10) is not None

    with receiving(port) as receiver:
        restarted = start_gateway(files.root, keys, tmp_path / "second", workers=2, extra_env=env)
        try:
            arrived = poll(lambda: receiver.by_agent("kill/"), lambda got: len(got) >= len(agents), WAIT)
            assert sorted(arrived) == sorted(agents)  # every access, none missing
            mark = expected_fingerprint(keys[0], restarted.token(PWAV))
            (listen,) = poll(
                lambda: [e for e in receiver.events(kind="listen").values() if e["fingerprint"] == mark],
                lambda found: len(found) >= 1,
                WAIT,
            )
            assert listen["seconds"] == 10.0 and listen["heard"] == [[0.0, 5.0], [20.0, 25.0]]  # the session survived
            every = [event for delivery in receiver.accepted() for event in delivery.events]
            assert all(delivery.valid for delivery in receiver.deliveries)
            assert len({str(event["id"]) for event in every}) == len(agents) + 1  # duplicates share an id
        finally:
            stop_process(restarted.process)


def test_the_outbox_bound_drops_the_oldest_and_counts_them(files: Storage, tmp_path: Path) -> None:
    port = free_port()
    env = ledger_env(f"http://{HOST}:{port}/hook", tmp_path, GATEWAY_LEDGER_MAX_EVENTS="5")
    with running_gateway(files.root, [new_key()], tmp_path, extra_env=env) as gateway:
        for number in range(12):
            assert get(gateway, gateway.target(P64K), f"bound/{number:02d}").status == 200

        def counts() -> tuple[float, float]:
            samples = scrape(gateway.base_url)
            return metric(samples, "gateway_ledger_events_total", type="access"), metric(
                samples, "gateway_ledger_dropped_total"
            )

        assert poll(counts, lambda got: got == (12, 7), WAIT) == (12, 7)
        with receiving(port) as receiver:

            def delivered() -> tuple[float, float]:
                samples = scrape(gateway.base_url)
                return metric(samples, "gateway_ledger_delivered_total"), metric(samples, "gateway_ledger_pending")

            assert poll(delivered, lambda got: got == (5, 0), WAIT) == (5, 0)
            assert sorted(receiver.by_agent("bound/")) == [f"bound/{n:02d}" for n in range(7, 12)]  # the newest
        assert gateway.log_since(0).count("ledger: dropping events") == 1  # logged once
