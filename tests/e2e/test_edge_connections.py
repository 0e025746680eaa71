"""The edge alone in front of clients: heads must arrive in time, be bounded, and connections are bounded.

uvicorn by itself has no head deadline and no connection bound (see
gateway/edge/protocol.py); these are the refusals the gateway adds, each
checked over real sockets against a real `serve`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from support.http import HOST, parse_raw_response, split_base
from support.keys import new_key
from support.polling import poll
from support.processes import Gateway, running_gateway
from support.storage import MIB

BIG = b"\x00" * (8 * MIB)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("connections") / "storage"
    root.mkdir()
    (root / "small.mp3").write_bytes(b"ID3" + bytes(1000))
    (root / "big.mp3").write_bytes(BIG)
    env = {"GATEWAY_HEADER_TIMEOUT": "1", "GATEWAY_MAX_CONNECTIONS": "16"}
    with running_gateway(root, [new_key()], tmp_path_factory.mktemp("gateway"), extra_env=env) as gateway:
        yield gateway


def connect(gateway: Gateway) -> socket.socket:
    host, port = split_base(gateway.base_url)
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_response(sock: socket.socket) -> int:
    """The status of one whole response (headers and Content-Length body) read off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    response = parse_raw_response(data)
    rest = response.rest
    while len(rest) < int(response.headers["content-length"]):
        rest += sock.recv(65536)
    return response.status


def get(gateway: Gateway, path: str) -> bytes:
    return f"GET {gateway.target(path)} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def test_a_head_that_does_not_arrive_in_time_is_408_and_closed(edge: Gateway) -> None:
    with connect(edge) as sock:
        sock.sendall(b"GET /" + b"A" * 22 + b" HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        answer = read_all(sock)  # returns only because the server closes
    assert parse_raw_response(answer).status == 408


def test_a_connection_that_sends_nothing_is_closed_too(edge: Gateway) -> None:
    with connect(edge) as sock:
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_a_head_over_32_kib_is_431_and_a_target_over_16_kib_414(edge: Gateway) -> None:
    with connect(edge) as sock:
        sock.sendall(get(edge, "/small.mp3")[:-2] + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 1000) for n in range(40)))
        assert parse_raw_response(read_all(sock)).status == 431
    with connect(edge) as sock:
        sock.sendall(b"GET /" + b"A" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parse_raw_response(read_all(sock)).status == 414


def test_at_the_bound_the_connection_waiting_longest_makes_room(edge: Gateway) -> None:
    idle = []
    for _ in range(16):  # kept alive after a request each: idle, waiting for the next one
        sock = connect(edge)
        sock.sendall(get(edge, "/small.mp3"))
        assert read_response(sock) == 200
        idle.append(sock)
    try:
        with connect(edge) as newcomer:
            newcomer.sendall(get(edge, "/small.mp3"))
            assert read_response(newcomer) == 200
        idle[0].settimeout(5)
        assert idle[0].recv(65536) == b""  # the oldest idle one was closed for it
    finally:
        for sock in idle:
            sock.close()


def test_when_every_connection_is_busy_a_new_one_is_refused_with_503(edge: Gateway) -> None:
    busy = []
    try:
        for _ in range(16):  # each a download its client does not read: busy, never evictable
            sock = connect(edge)
            sock.sendall(get(edge, "/big.mp3"))
            assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
            busy.append(sock)
        with connect(edge) as refused:
            assert read_all(refused).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in busy:
            sock.close()

    def served() -> bool:
        with connect(edge) as later:
            later.sendall(get(edge, "/small.mp3").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            return read_all(later).startswith(b"HTTP/1.1 200 ")

    # Once the server has noticed the closed downloads, there is room again (a liveness bound).
    assert poll(served, bool, timeout=10.0)
