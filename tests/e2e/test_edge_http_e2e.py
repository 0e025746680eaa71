"""The edge section of the contract that needs a real `storage-gateway serve`: bytes on the wire.

A HEAD and a 304 send no body whatever the app passes (uvicorn drops it),
answers on one keep-alive connection are framed so the next one parses,
and the health endpoints answer over a real socket. The rest of the edge
section runs in process: unit/test_edge_http.py.
"""

from __future__ import annotations

import http.client

import pytest
from support.http import parse_raw_response, raw_exchange, request, split_base
from support.processes import Gateway
from support.storage import P8M, P64K, Storage

NOT_FOUND_BODY = b"Not Found\n"


def etag_of(storage: Storage, path: str) -> str:
    info = storage.file(path).stat()
    return f'"{int(info.st_mtime):x}-{info.st_size:x}"'


# -- HEAD and 304 on the wire ------------------------------------------------------


def test_head_has_content_length_and_no_body(gateway: Gateway, storage: Storage) -> None:
    # A raw socket: http.client would not read a body after HEAD even if one were sent.
    token = gateway.token(P64K)
    raw = raw_exchange(gateway.base_url, f"HEAD /{token} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    response = parse_raw_response(raw)
    assert response.status == 200
    assert response.headers["content-length"] == str(len(storage.data(P64K)))
    assert response.headers["etag"] == etag_of(storage, P64K)
    assert response.rest == b""


def test_head_of_a_large_file_sends_no_body(gateway: Gateway, storage: Storage) -> None:
    token = gateway.token(P8M)
    raw = raw_exchange(gateway.base_url, f"HEAD /{token} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    response = parse_raw_response(raw)
    assert response.status == 200
    assert response.headers["content-length"] == str(8 * 1024 * 1024)
    assert response.rest == b""


def test_304_has_no_body_on_the_wire(gateway: Gateway, storage: Storage) -> None:
    token = gateway.token(P8M)
    etag = etag_of(storage, P8M)
    raw = raw_exchange(
        gateway.base_url,
        f"GET /{token} HTTP/1.1\r\nHost: t\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n".encode(),
    )
    response = parse_raw_response(raw)
    assert response.status == 304
    assert response.headers["etag"] == etag
    assert response.rest == b""


# -- one connection, many answers ---------------------------------------------------


def test_keep_alive_connection_survives_head_304_206_and_404(gateway: Gateway, storage: Storage) -> None:
    """Each answer is framed right, so the next answer on the same connection parses."""
    host, port = split_base(gateway.base_url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    data = storage.data(P64K)
    try:
        steps: list[tuple[str, str, dict[str, str], int, bytes]] = [
            ("HEAD", gateway.target(P64K), {}, 200, b""),
            ("GET", gateway.target(P64K), {"If-None-Match": etag_of(storage, P64K)}, 304, b""),
            ("GET", gateway.target(P64K), {"Range": "bytes=10-19"}, 206, data[10:20]),
            ("GET", "/" + "A" * 22, {}, 404, NOT_FOUND_BODY),
            ("POST", gateway.target(P64K), {}, 405, b"Method Not Allowed\n"),
            ("GET", gateway.target(P64K), {}, 200, data),
        ]
        for method, target, headers, status, body in steps:
            conn.request(method, target, headers=headers)
            response = conn.getresponse()
            assert (method, response.status) == (method, status)
            assert response.read() == body
    finally:
        conn.close()


# -- health over a real socket ----------------------------------------------------


@pytest.mark.parametrize("target", ["/healthz", "/readyz"])
def test_health_endpoints(gateway: Gateway, target: str) -> None:
    reply = request(gateway.base_url, target)
    assert reply.status == 200


def test_readyz_names_the_storage(gateway: Gateway) -> None:
    assert b"ok" in request(gateway.base_url, "/readyz").body
