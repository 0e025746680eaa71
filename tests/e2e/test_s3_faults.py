"""S3 faults: the endpoint paused (SIGSTOP) or killed, before a request and mid-body.

Each test gets its own moto process and its own gateway (short timeouts, no
retries: GATEWAY_S3_CONNECT_TIMEOUT=1, GATEWAY_S3_READ_TIMEOUT=2,
GATEWAY_S3_MAX_ATTEMPTS=1), so a fault never leaks into the next test. The
promise under test: an outage is a 502/503/504, never a 404 and never a 200
whose body is silently cut short; disk files keep being served meanwhile;
and a client that leaves releases the S3 connection at once.

Waits are bounded (poll, socket timeouts) for liveness only; nothing here
asserts how fast anything is.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.http import Reply, receive_head, request, split_base
from support.keys import new_key
from support.ops import metric_total
from support.polling import poll
from support.proc import accept_queue, tcp_sockets_to
from support.processes import Gateway, running_gateway
from support.s3 import (
    FAST_FAILURE_ENV,
    MotoServer,
    gateway_s3_env,
    key_for,
    random_bytes,
    running_moto,
    s3_client,
    storage_urls,
)
from support.storage import MIB, file_url

BUCKET = "faults"
PREFIX = "pre"
S3_SMALL = "/300/archived.mp3"
S3_BIG = "/300/big-20m.ogg"
DISK_FILE = "/recent/today.mp3"
NOWHERE = "/missing/nowhere.mp3"
BIG_SIZE = 20 * MIB
STORAGE_FAILURE = (502, 503, 504)
# Longer than any gateway timeout (1 s connect + 2 s read, no retry) by a wide margin.
CLIENT_TIMEOUT = 20.0
# Three times the worst case of one S3 call (1 s connect + 2 s read): past it, the gateway hangs.
STALL_BOUND = 10.0


@dataclass
class Rig:
    """One moto, one gateway over `file:///disk` and `s3://faults/pre`, and the bytes of each file."""

    moto: MotoServer
    gateway: Gateway
    small: bytes
    big: bytes
    disk: bytes

    def get(self, path: str, method: str = "GET", timeout: float = CLIENT_TIMEOUT) -> Reply:
        return request(self.gateway.base_url, self.gateway.target(path), method=method, timeout=timeout)

    def metrics(self) -> str:
        reply = request(self.gateway.base_url, "/metrics")
        assert reply.status == 200
        return reply.body.decode()

    def storage_errors(self, kind: str | None = None) -> float:
        labels = {"backend": "s3"} | ({"kind": kind} if kind else {})
        return metric_total(self.metrics(), "gateway_storage_errors_total", **labels)

    def assert_disk_still_served(self) -> None:
        reply = self.get(DISK_FILE)
        assert (reply.status, reply.body) == (200, self.disk)


RigFactory = Callable[..., Rig]


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[RigFactory]:
    """Build a rig: `s3_first` puts the S3 tier before the disk tier; `env` adds gateway settings."""
    with contextlib.ExitStack() as stack:

        def make(s3_first: bool = False, disk_tier: bool = True, env: Mapping[str, str] | None = None) -> Rig:
            moto = stack.enter_context(running_moto(tmp_path / "moto"))
            s3 = s3_client(moto.endpoint_url)
            s3.create_bucket(Bucket=BUCKET)
            small, big, disk = random_bytes(40_000), random_bytes(BIG_SIZE), random_bytes(5000)
            s3.put_object(Bucket=BUCKET, Key=key_for(PREFIX, S3_SMALL), Body=small)
            s3.put_object(Bucket=BUCKET, Key=key_for(PREFIX, S3_BIG), Body=big)
            root = tmp_path / "disk"
            (root / "recent").mkdir(parents=True)
            (root / DISK_FILE.lstrip("/")).write_bytes(disk)
            tiers = [file_url(root), f"s3://{BUCKET}/{PREFIX}"][0 if disk_tier else 1 :]
            gateway = stack.enter_context(
                running_gateway(
                    root,
                    [new_key()],
                    tmp_path / "gateway",
                    extra_env=gateway_s3_env(moto, {**FAST_FAILURE_ENV, **(env or {})}),
                    storage_url=storage_urls(*(reversed(tiers) if s3_first else tiers)),
                )
            )
            return Rig(moto, gateway, small, big, disk)

        yield make


@pytest.fixture
def rig(make_rig: RigFactory) -> Rig:
    return make_rig()


@dataclass
class Download:
    """A GET on a raw socket with a small receive buffer: headers read, body read on demand."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    received: bytearray

    def read_until(self, size: int) -> None:
        while len(self.received) < size:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed after {len(self.received)} bytes"
            self.received += chunk

    def read_to_end(self) -> None:
        """Read until the gateway closes the connection; socket.timeout (a hang) fails the test."""
        while chunk := self.sock.recv(1 << 20):
            self.received += chunk


@pytest.fixture
def downloads() -> Iterator[list[Download]]:
    opened: list[Download] = []
    yield opened
    for download in opened:
        download.sock.close()


def start_download(rig: Rig, path: str, opened: list[Download]) -> Download:
    host, port = split_base(rig.gateway.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # a slow reader: backpressure
    sock.settimeout(CLIENT_TIMEOUT)
    sock.connect((host, port))
    download = Download(sock, 0, {}, bytearray())
    opened.append(download)
    sock.sendall(f"GET {rig.gateway.target(path)} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    head = receive_head(sock)
    download.status = head.status
    download.headers.update(head.headers)
    download.received += head.rest
    return download


# -- S3 down before the request -------------------------------------------------------


def test_paused_s3_is_a_gateway_timeout_not_a_404(rig: Rig) -> None:
    rig.moto.pause()
    offset = rig.gateway.log_size()
    reply = rig.get(S3_SMALL)
    assert reply.status == 504  # nothing answered within the read timeout
    assert reply.body == b"Gateway Timeout\n"
    # A file that is on no tier is not "missing" while a tier cannot say so.
    assert rig.get(NOWHERE).status in STORAGE_FAILURE
    rig.assert_disk_still_served()
    assert "storage s3 failed kind=timeout" in rig.gateway.log_since(offset)
    assert rig.storage_errors("timeout") == 2


def test_max_attempts_1_makes_one_attempt(rig: Rig) -> None:
    """GATEWAY_S3_MAX_ATTEMPTS=1: one try, no retry. Counted as connections the paused
    moto's kernel accepted for it: each attempt after a timeout comes on a new connection."""
    assert rig.get(S3_SMALL).status == 200
    # No idle pooled connection (moto closes them), so every attempt must connect anew.
    assert poll(lambda: tcp_sockets_to(rig.gateway.pid, rig.moto.port), lambda found: not found) == []
    rig.moto.pause()
    queued = accept_queue(rig.moto.pid, rig.moto.port)
    assert rig.get(S3_SMALL).status == 504
    attempts = accept_queue(rig.moto.pid, rig.moto.port) - queued
    assert attempts == 1, f"{attempts} attempts (connections) for one lookup with GATEWAY_S3_MAX_ATTEMPTS=1"


def test_killed_s3_is_unavailable_not_a_404(rig: Rig) -> None:
    rig.moto.kill()
    for path, method in [(S3_SMALL, "GET"), (S3_SMALL, "HEAD"), (NOWHERE, "GET")]:
        reply = rig.get(path, method=method)
        assert reply.status in STORAGE_FAILURE, (path, method, reply.status)
    rig.assert_disk_still_served()
    assert rig.storage_errors() >= 3


def test_s3_first_tier_down_still_lets_the_disk_tier_serve(make_rig: RigFactory) -> None:
    rig = make_rig(s3_first=True)
    assert rig.get(DISK_FILE).status == 200
    rig.moto.kill()
    offset = rig.gateway.log_size()
    rig.assert_disk_still_served()
    assert "storage s3 failed" in rig.gateway.log_since(offset)  # tried, failed, logged, then disk
    assert rig.get(S3_SMALL).status in STORAGE_FAILURE
    assert rig.get(NOWHERE).status in STORAGE_FAILURE


def test_s3_back_after_a_pause_is_served_again(rig: Rig) -> None:
    rig.moto.pause()
    assert rig.get(S3_SMALL).status == 504
    rig.moto.resume()
    reply = rig.get(S3_SMALL)
    assert (reply.status, reply.body) == (200, rig.small)


def readyz_until(rig: Rig, done: Callable[[Reply], bool]) -> Reply:
    """Poll /readyz (its S3 check is cached for a few seconds) until `done`, bounded."""
    return poll(
        lambda: request(rig.gateway.base_url, "/readyz", timeout=CLIENT_TIMEOUT), done, timeout=30.0, interval=0.5
    )


def test_readyz_reports_s3_down_but_stays_ready_while_disk_serves(rig: Rig) -> None:
    """A shared S3 tier down is every replica's problem: reported, but not a reason to take
    this replica (which still serves its disk tier) out of service."""
    assert request(rig.gateway.base_url, "/readyz").body == b"disk: ok\ns3: ok\n"
    rig.moto.kill()
    down = readyz_until(rig, lambda reply: b"s3: unavailable" in reply.body)
    assert (down.status, down.body) == (200, b"disk: ok\ns3: unavailable\n")


def test_readyz_of_an_s3_only_gateway_follows_s3_down_and_back(make_rig: RigFactory) -> None:
    rig = make_rig(disk_tier=False)
    assert request(rig.gateway.base_url, "/readyz").body == b"s3: ok\n"
    rig.moto.pause()
    down = readyz_until(rig, lambda reply: reply.status != 200)
    assert (down.status, down.body) == (503, b"s3: unavailable\n")
    rig.moto.resume()
    up = readyz_until(rig, lambda reply: reply.status == 200)
    assert (up.status, up.body) == (200, b"s3: ok\n")


# -- S3 down in the middle of a body --------------------------------------------------------


def test_s3_paused_mid_body_aborts_the_download(rig: Rig, downloads: list[Download]) -> None:
    download = start_download(rig, S3_BIG, downloads)
    assert download.status == 200
    assert download.headers["content-length"] == str(BIG_SIZE)
    download.read_until(512 * 1024)
    rig.moto.pause()
    offset = rig.gateway.log_size()
    rig.assert_disk_still_served()
    download.read_to_end()
    # An incomplete transfer against Content-Length: the client knows, and can resume ...
    assert len(download.received) < BIG_SIZE
    # ... and what did arrive is the object's beginning.
    assert bytes(download.received) == rig.big[: len(download.received)]
    log = rig.gateway.log_since(offset)
    assert "storage s3 failed while streaming" in log and "kind=timeout" in log
    assert rig.storage_errors("timeout") == 1
    rig.assert_disk_still_served()


def test_s3_killed_mid_body_aborts_the_download(rig: Rig, downloads: list[Download]) -> None:
    download = start_download(rig, S3_BIG, downloads)
    assert (download.status, download.headers["content-length"]) == (200, str(BIG_SIZE))
    download.read_until(512 * 1024)
    rig.moto.kill()
    download.read_to_end()
    assert len(download.received) < BIG_SIZE
    assert bytes(download.received) == rig.big[: len(download.received)]
    rig.assert_disk_still_served()


def test_s3_killed_mid_body_is_logged_and_counted_as_a_storage_error(rig: Rig, downloads: list[Download]) -> None:
    """The connection to S3 breaking mid-body is a storage failure like a timeout is:
    the gateway's own log line and gateway_storage_errors_total{backend="s3"}."""
    download = start_download(rig, S3_BIG, downloads)
    assert download.status == 200
    download.read_until(512 * 1024)
    offset = rig.gateway.log_size()
    rig.moto.kill()
    download.read_to_end()
    assert len(download.received) < BIG_SIZE
    log = rig.gateway.log_since(offset)
    assert "storage s3 failed while streaming" in log, log[-3000:]
    assert rig.storage_errors() == 1


# -- the client goes away, or stalls --------------------------------------------------------


def test_client_that_disconnects_releases_the_s3_connection(rig: Rig, downloads: list[Download]) -> None:
    download = start_download(rig, S3_BIG, downloads)
    assert download.status == 200
    download.read_until(256 * 1024)
    # The client has stopped reading: the S3 body waits in the gateway's socket (backpressure).
    streaming = poll(
        lambda: [s for s in tcp_sockets_to(rig.gateway.pid, rig.moto.port) if s.rx_queue > 0],
        lambda found: len(found) == 1,
    )
    assert len(streaming) == 1, tcp_sockets_to(rig.gateway.pid, rig.moto.port)
    inode = streaming[0].inode
    download.sock.close()
    downloads.remove(download)
    # The gateway closes that S3 connection (not drained into the pool, not left open).
    remaining = poll(
        lambda: {s.inode for s in tcp_sockets_to(rig.gateway.pid, rig.moto.port)},
        lambda inodes: inode not in inodes,
    )
    assert inode not in remaining, tcp_sockets_to(rig.gateway.pid, rig.moto.port)
    # And S3 still serves through it.
    reply = rig.get(S3_SMALL)
    assert (reply.status, reply.body) == (200, rig.small)


def test_stalled_downloads_do_not_block_other_s3_requests(make_rig: RigFactory, downloads: list[Download]) -> None:
    """A paused <audio> element keeps its connection and stops reading. With as many stalled
    downloads as the S3 pool has connections (1 here, 64 by default), other S3 requests and
    /readyz must still be answered (any answer: 200 or a storage failure), not hang."""
    rig = make_rig(env={"GATEWAY_S3_MAX_POOL_CONNECTIONS": "1"})
    stalled = start_download(rig, S3_BIG, downloads)
    assert stalled.status == 200
    stalled.read_until(256 * 1024)
    try:
        reply = rig.get(S3_SMALL, timeout=STALL_BOUND)
    except TimeoutError:
        pytest.fail(f"GET of another S3 file got no answer within {STALL_BOUND}s while a download stalls")
    assert reply.status in (200, *STORAGE_FAILURE)
    try:
        ready = request(rig.gateway.base_url, "/readyz", timeout=STALL_BOUND)
    except TimeoutError:
        pytest.fail(f"/readyz got no answer within {STALL_BOUND}s while a download stalls")
    assert ready.status in (200, 503)
