"""HTTP to a real server: one request, raw bytes on a socket, and the parsers for what comes back.

`request` uses `http.client`, which sends the request target exactly as
given: no normalisation of `%3D`, `=`, `..`. `parse_raw_response` is the one
reader of the head of a response taken off a socket (`receive_head` reads
one and parses it), for every test that talks on a socket of its own;
`parse_byteranges` reads a `multipart/byteranges` body strictly.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .storage import MIB

if TYPE_CHECKING:
    from .processes import Gateway

HOST = "127.0.0.1"  # every server the tests start listens here


@dataclass(frozen=True)
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    base_url: str,
    target: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    """Send one request with the target exactly as given and read the whole answer."""
    host, port = split_base(base_url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, response.headers, data)
    finally:
        conn.close()


def split_base(base_url: str) -> tuple[str, int]:
    match = re.fullmatch(r"http://([^:/]+):(\d+)", base_url)
    assert match, base_url
    return match.group(1), int(match.group(2))


def raw_exchange(base_url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Write raw request bytes (which should say `Connection: close`) and read until EOF.

    No half-close (shutdown(SHUT_WR)) after the request: uvicorn takes a
    half-close for a disconnect and drops the response (uvicorn issue #1264).
    """
    host, port = split_base(base_url)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; last value wins
    head: bytes
    rest: bytes  # everything after the blank line


def parse_raw_response(data: bytes) -> RawResponse:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, head, rest)


def receive_head(sock: socket.socket, bufsize: int = 65536) -> RawResponse:
    """Read from `sock` until the end of the response's headers (what came with them is in `rest`)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(bufsize)
        assert chunk, f"connection closed before the headers: {data!r}"
        data += chunk
    return parse_raw_response(data)


def download_sha256(gateway: Gateway, path: str) -> tuple[int, int, int, str]:
    """(status, Content-Length, bytes received, sha256) of a GET, read in chunks (never whole in memory)."""
    host, port = split_base(gateway.base_url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", gateway.target(path))
        response = conn.getresponse()
        digest = hashlib.sha256()
        received = 0
        while chunk := response.read(MIB):
            digest.update(chunk)
            received += len(chunk)
        return response.status, int(response.headers["Content-Length"]), received, digest.hexdigest()
    finally:
        conn.close()


# -- multipart/byteranges ------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    content_type: str | None
    content_range: str
    data: bytes


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def boundary_of(content_type: str) -> str:
    match = re.fullmatch(r'multipart/byteranges;\s*boundary="?([^";]+)"?', content_type.strip())
    assert match, f"not multipart/byteranges: {content_type!r}"
    return match.group(1)


def parse_byteranges(content_type: str, body: bytes) -> list[Part]:
    """Parse a multipart/byteranges body strictly, using each part's Content-Range for its length."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    at = body.find(delimiter)
    assert at >= 0, "no first delimiter"
    assert body[:at].strip(b"\r\n") == b"", f"unexpected preamble {body[:at]!r}"
    pos = at + len(delimiter)
    parts: list[Part] = []
    while True:
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :] in (b"", b"\r\n"), f"trailing bytes after close delimiter: {body[pos + 2 :]!r}"
            return parts
        assert body[pos : pos + 2] == b"\r\n", f"bad delimiter line at {pos}"
        head_end = body.index(b"\r\n\r\n", pos)
        fields: dict[str, str] = {}
        for line in body[pos + 2 : head_end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        content_range = fields["content-range"]
        match = _CONTENT_RANGE.fullmatch(content_range)
        assert match, content_range
        length = int(match.group(2)) - int(match.group(1)) + 1
        data_start = head_end + 4
        data = body[data_start : data_start + length]
        assert len(data) == length, "part shorter than its Content-Range"
        parts.append(Part(fields.get("content-type"), content_range, data))
        pos = data_start + length
        assert body[pos : pos + 2 + len(delimiter)] == b"\r\n" + delimiter, f"no delimiter after part at {pos}"
        pos += 2 + len(delimiter)
