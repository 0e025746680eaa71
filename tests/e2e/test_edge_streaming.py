"""Streaming large files: byte-exact, bounded memory, descriptors released, honest failures.

The large files are sparse (os.truncate) with random bytes written at known
offsets, so 256 MiB costs nothing to create and every download is still
checked byte for byte against the file (sha256 over the stream).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.http import download_sha256, receive_head, request, split_base
from support.polling import poll
from support.proc import open_fds_to, rss_bytes
from support.processes import Gateway
from support.storage import MIB, P8M, P64K, Storage

LARGE_SIZE = 256 * MIB
READ = 64 * 1024


@dataclass(frozen=True)
class LargeFile:
    path: str  # storage path, as in the token
    file: Path
    size: int
    sha256: str
    marks: dict[int, bytes]  # offset -> random bytes written there (zeros elsewhere)

    def expected_prefix(self, length: int) -> bytes:
        data = bytearray(length)
        for offset, chunk in self.marks.items():
            if offset < length:
                piece = chunk[: length - offset]
                data[offset : offset + len(piece)] = piece
        return bytes(data)


def make_sparse(storage: Storage, path: str, size: int) -> LargeFile:
    target = storage.file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    marks: dict[int, bytes] = {}
    with target.open("wb") as handle:
        os.truncate(handle.fileno(), size)
        # 4 KiB of random bytes at each offset; offsets at least 4 KiB apart, so no overlap.
        offsets = sorted(
            {0, 5000, READ - 3, 7 * MIB + 12345, *range(16 * MIB - 100, size - 8192, 16 * MIB), size - 4096}
        )
        for offset in offsets:
            chunk = os.urandom(4096)
            handle.seek(offset)
            handle.write(chunk)
            marks[offset] = chunk
    digest = file_sha256(target)
    return LargeFile(path, target, size, digest, marks)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def large(storage: Storage) -> LargeFile:
    return make_sparse(storage, "/large/sparse-256m.bin", LARGE_SIZE)


@dataclass
class Stream:
    """A GET on a raw socket, headers read, body not yet."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    buffered: bytes

    def read(self, limit: int = READ) -> bytes:
        if self.buffered:
            data, self.buffered = self.buffered[:limit], self.buffered[limit:]
            return data
        return self.sock.recv(limit)

    def close(self) -> None:
        self.sock.close()


def open_stream(gateway: Gateway, path: str, receive_buffer: int | None = None, timeout: float = 30.0) -> Stream:
    host, port = split_base(gateway.base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect((host, port))
    sock.sendall(f"GET {gateway.target(path)} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    head = receive_head(sock)
    return Stream(sock, head.status, head.headers, head.rest)


@pytest.fixture
def stream_closer() -> Iterator[list[Stream]]:
    streams: list[Stream] = []
    yield streams
    for stream in streams:
        stream.close()


def settle(gateway: Gateway, file: Path) -> None:
    """Wait (bounded) until earlier, finished downloads of `file` have closed their descriptors."""
    assert poll(lambda: open_fds_to(gateway.pid, file), lambda count: count == 0, timeout=5.0) == 0


def test_8_mib_download_is_byte_exact(gateway: Gateway, storage: Storage) -> None:
    status, length, received, digest = download_sha256(gateway, P8M)
    assert (status, length, received) == (200, 8 * MIB, 8 * MIB)
    assert digest == hashlib.sha256(storage.data(P8M)).hexdigest()


def test_256_mib_download_is_byte_exact(gateway: Gateway, large: LargeFile) -> None:
    status, length, received, digest = download_sha256(gateway, large.path)
    assert (status, length, received) == (200, large.size, large.size)
    assert digest == large.sha256


def test_range_deep_inside_the_large_file(gateway: Gateway, large: LargeFile) -> None:
    offset = 16 * MIB - 100 + 16 * MIB * 5
    reply = request(gateway.base_url, gateway.target(large.path), headers={"Range": f"bytes={offset}-{offset + 4095}"})
    assert reply.status == 206
    assert reply.body == large.marks[offset]


def test_client_that_leaves_early_releases_the_file(
    gateway: Gateway, large: LargeFile, stream_closer: list[Stream]
) -> None:
    settle(gateway, large.file)
    stream = open_stream(gateway, large.path)
    stream_closer.append(stream)
    assert stream.status == 200
    received = b""
    while len(received) < MIB:
        chunk = stream.read()
        assert chunk
        received += chunk
    assert received[:READ] == large.expected_prefix(READ)
    # While the download is open the gateway holds exactly one descriptor on the file ...
    assert open_fds_to(gateway.pid, large.file) == 1
    stream.close()
    # ... and after the client has gone it lets go of it (bounded wait for liveness only).
    assert poll(lambda: open_fds_to(gateway.pid, large.file), lambda count: count == 0, timeout=5.0) == 0
    assert request(gateway.base_url, gateway.target(P64K)).status == 200


def test_many_clients_that_leave_early_release_every_descriptor(
    gateway: Gateway, large: LargeFile, stream_closer: list[Stream]
) -> None:
    settle(gateway, large.file)
    streams = [open_stream(gateway, large.path) for _ in range(8)]
    stream_closer.extend(streams)
    for stream in streams:
        assert stream.status == 200
        assert stream.read()
    assert open_fds_to(gateway.pid, large.file) == 8
    for stream in streams:
        stream.close()
    assert poll(lambda: open_fds_to(gateway.pid, large.file), lambda count: count == 0, timeout=5.0) == 0


def test_slow_client_does_not_grow_memory_with_the_file(
    gateway: Gateway, large: LargeFile, stream_closer: list[Stream]
) -> None:
    """RSS stays within 64 MiB of where it started while a 256 MiB file goes to a slow reader:
    the gateway holds a bounded window, not the file."""
    request(gateway.base_url, gateway.target(P64K))  # warm
    baseline = rss_bytes(gateway.pid)
    stream = open_stream(gateway, large.path, receive_buffer=256 * 1024)
    stream_closer.append(stream)
    assert stream.status == 200
    digest = hashlib.sha256()
    received = 0
    peak = baseline
    slow_until = time.monotonic() + 2.0  # a slow phase, then drain the rest quickly
    reads = 0
    while True:
        chunk = stream.read(READ)
        if not chunk:
            break
        digest.update(chunk)
        received += len(chunk)
        reads += 1
        if time.monotonic() < slow_until:
            time.sleep(0.003)
        if reads % 32 == 0:
            peak = max(peak, rss_bytes(gateway.pid))
    peak = max(peak, rss_bytes(gateway.pid))
    assert received == large.size
    assert digest.hexdigest() == large.sha256
    assert peak - baseline < 64 * MIB, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"


def test_file_truncated_while_streaming_ends_short(
    gateway: Gateway, storage: Storage, stream_closer: list[Stream]
) -> None:
    victim = make_sparse(storage, "/large/truncate-me.bin", LARGE_SIZE)
    stream = open_stream(gateway, victim.path, receive_buffer=256 * 1024)
    stream_closer.append(stream)
    assert stream.status == 200
    assert stream.headers["content-length"] == str(victim.size)
    assert "transfer-encoding" not in stream.headers
    first = stream.read()
    assert first
    os.truncate(victim.file, MIB)
    received = bytearray(first)
    while True:
        chunk = stream.read(MIB)
        if not chunk:
            break  # the connection closed
        received += chunk
    # An incomplete transfer against Content-Length, never a complete-looking answer ...
    assert len(received) < victim.size
    # ... and what did arrive is the file as it was.
    assert bytes(received[: 8 * MIB]) == victim.expected_prefix(min(len(received), 8 * MIB))
    # The gateway keeps serving.
    assert request(gateway.base_url, "/healthz").status == 200
    reply = request(gateway.base_url, gateway.target(P64K))
    assert reply.status == 200 and reply.body == storage.data(P64K)
    assert poll(lambda: open_fds_to(gateway.pid, victim.file), lambda count: count == 0, timeout=5.0) == 0


def test_file_truncated_before_streaming_is_served_at_its_new_size(gateway: Gateway, storage: Storage) -> None:
    victim = make_sparse(storage, "/large/shrunk.bin", 32 * MIB)
    os.truncate(victim.file, 3 * MIB)
    status, length, received, digest = download_sha256(gateway, victim.path)
    assert (status, length, received) == (200, 3 * MIB, 3 * MIB)
    assert digest == hashlib.sha256(victim.expected_prefix(3 * MIB)).hexdigest()


def test_file_deleted_while_streaming_completes(
    gateway: Gateway, storage: Storage, stream_closer: list[Stream]
) -> None:
    victim = make_sparse(storage, "/large/delete-me.bin", 64 * MIB)
    stream = open_stream(gateway, victim.path, receive_buffer=256 * 1024)
    stream_closer.append(stream)
    assert stream.status == 200
    digest = hashlib.sha256()
    first = stream.read()
    digest.update(first)
    received = len(first)
    victim.file.unlink()
    while chunk := stream.read(MIB):
        digest.update(chunk)
        received += len(chunk)
    assert received == victim.size
    assert digest.hexdigest() == victim.sha256
    # The deleted file is gone for new requests, and its descriptor is released.
    assert request(gateway.base_url, gateway.target(victim.path)).status == 404
    assert poll(lambda: open_fds_to(gateway.pid, victim.file), lambda count: count == 0, timeout=5.0) == 0
