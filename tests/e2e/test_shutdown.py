"""Graceful shutdown of a real `serve`: SIGTERM stops accepting, running downloads get the drain time.

Every test starts its own gateway (SIGTERM ends it). A download is "in
flight" when its client holds it open without reading: the file (24 MiB) is
far larger than what the socket buffers hold, so the gateway is still
sending when the signal arrives.
"""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from support.http import split_base
from support.keys import new_key
from support.ops import HeldDownload, connect_refused, hold_download, new_connection
from support.polling import poll
from support.processes import Gateway, start_gateway, stop_process, wait_exit
from support.storage import MIB, Storage

BIG = "/ops-shutdown/recording-24m.wav"


@pytest.fixture(scope="module")
def big(storage: Storage) -> bytes:
    return storage.add(BIG, os.urandom(24 * MIB)).read_bytes()


class Start(Protocol):
    def __call__(self, drain_seconds: float, workers: int = 1) -> Gateway: ...


@pytest.fixture
def start(storage: Storage, tmp_path: Path) -> Iterator[Start]:
    """start(drain_seconds, workers) -> Gateway; every gateway started is stopped at the end."""
    started: list[Gateway] = []

    def launch(drain_seconds: float, workers: int = 1) -> Gateway:
        gateway = start_gateway(
            storage.root,
            [new_key()],
            tmp_path / f"gateway-{len(started)}",
            workers,
            extra_env={"GATEWAY_DRAIN_SECONDS": str(drain_seconds)},
        )
        started.append(gateway)
        return gateway

    yield launch
    for gateway in started:
        stop_process(gateway.process)


def in_flight(gateway: Gateway) -> HeldDownload:
    download = hold_download(gateway.base_url, gateway.target(BIG))
    assert download.status == 200
    assert download.read_some() > 0
    return download


def test_download_in_flight_completes_after_sigterm_and_new_connections_are_refused(start: Start, big: bytes) -> None:
    gateway = start(30)
    download = in_flight(gateway)
    try:
        os.kill(gateway.pid, signal.SIGTERM)
        # The listener closes at once (within uvicorn's 0.1 s tick), while the download still runs.
        assert poll(lambda: connect_refused(gateway.base_url), bool, timeout=5)
        assert gateway.process.poll() is None, "serve exited with a download in flight"
        body = download.read_to_end()
    finally:
        download.close()
    assert download.length == len(big)
    assert body == big
    assert wait_exit(gateway.process, 15) is not None, "serve did not exit once the download was done"


def test_readyz_on_open_keep_alive_connection_after_sigterm(start: Start) -> None:
    """What a load balancer's keep-alive probe sees once SIGTERM arrived: 503, or a closed connection.

    The SIGTERM handler turns readiness to 503 at once; uvicorn closes idle
    keep-alive connections a moment later (its main loop looks at the exit
    flag every 0.1 s). A probe sent right after the signal usually lands
    before that and gets 503 with `draining`; when it lands after, the
    connection is already closed. Never 200. A download is kept in flight so
    the server is draining, not gone.
    """
    gateway = start(30)
    download = in_flight(gateway)
    conn = http.client.HTTPConnection(*split_base(gateway.base_url), timeout=10)
    try:
        conn.request("GET", "/readyz")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"disk: ok\n")
        assert not first.will_close
        os.kill(gateway.pid, signal.SIGTERM)
        try:
            conn.request("GET", "/readyz")
            answer = conn.getresponse()
            outcome = (answer.status, answer.read())
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            outcome = (0, b"connection closed")
        assert outcome in {(503, b"disk: ok\ndraining\n"), (0, b"connection closed")}
    finally:
        conn.close()
        download.close()


def test_download_outlasting_the_drain_is_cut_not_hung(start: Start, big: bytes) -> None:
    gateway = start(1)
    download = in_flight(gateway)
    try:
        os.kill(gateway.pid, signal.SIGTERM)
        # The client never reads: after the 1 s drain the server gives up on it and exits.
        assert wait_exit(gateway.process, 20) is not None, "serve still running long after the drain time"
        body = download.read_to_end()  # EOF or reset; the socket timeout fails a hang
    finally:
        download.close()
    assert len(body) < download.length == len(big)
    assert body == big[: len(body)]


def test_two_workers_sigterm_to_supervisor_drains_and_refuses_new_connections(start: Start, big: bytes) -> None:
    """The deployed shape (systemd KillMode=mixed, Docker, Kubernetes): SIGTERM to the main process only.

    uvicorn's supervisor passes SIGTERM to its workers, which stop accepting
    and drain; new connections must be refused meanwhile, not left waiting
    in a listen queue nobody reads.
    """
    gateway = start(30, workers=2)
    download = in_flight(gateway)
    try:
        os.kill(gateway.pid, signal.SIGTERM)
        outcome = poll(lambda: new_connection(gateway.base_url), lambda seen: seen == "refused", timeout=5)
        still_running = gateway.process.poll() is None
        body = download.read_to_end()
    finally:
        download.close()
    assert body == big
    assert wait_exit(gateway.process, 15) == 0
    assert still_running, "serve exited with a download in flight"
    assert outcome == "refused", "a new connection 5 s after SIGTERM"
