"""Real download managers against a real `storage-gateway serve`: curl, wget, aria2c.

A download is cut for real, in one of two ways: the connection is dropped
in the middle by a relay between client and gateway (a network failure:
the client sees a transfer short of Content-Length and keeps the partial
file), or the client runs rate-limited and is killed once part of the file
has arrived (wget, aria2c; curl 7.88's --limit-rate does not hold back a
loopback transfer, so it is not killed but cut by the relay). It is then
run again in resume mode. The
result must be byte-exact (sha256), and the gateway's access log must show
the resume as a Range request answered 206 (not a fresh 200 that happens
to overwrite the file). aria2c must split an 8 MiB file over several ranged
connections. The same is done for an object in S3 (moto) for curl and aria2c.

Waits are bounded (liveness only); nothing asserts a speed.
"""

from __future__ import annotations

import hashlib
import json
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest
from support.http import HOST, split_base
from support.keys import new_key
from support.polling import poll
from support.processes import Gateway, running_gateway
from support.s3 import gateway_s3_env, key_for, random_bytes, running_moto, s3_client
from support.storage import MIB, P8M, PCYR, Storage

RUN_TIMEOUT = 60.0  # seconds one client run may take (an 8 MiB file on the loopback)
CUT_AFTER = MIB  # kill the rate-limited client once this much has arrived
RATE = "512k"  # 8 MiB would take 16 s: it is always cut long before the end


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: tests/run installs it (apt-get)")
    return found


def run(command: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{command[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def cut_short(command: Sequence[str], partial: Path, total: int) -> int:
    """Run a rate-limited download and kill it (SIGKILL, like a dropped connection or a closed
    laptop) once `CUT_AFTER` bytes are on disk; the size of the partial file."""
    process = subprocess.Popen(
        list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        size = poll(
            lambda: partial.stat().st_size if partial.exists() else 0,
            lambda size: size >= CUT_AFTER or process.poll() is not None,
            timeout=RUN_TIMEOUT,
        )
        assert process.poll() is None, f"{command[0]} ended before it was cut ({size} bytes): {process.stderr.read()}"
        assert size >= CUT_AFTER, f"only {size} bytes arrived within {RUN_TIMEOUT}s"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
    size = partial.stat().st_size
    assert CUT_AFTER <= size < total, size
    return size


class CuttingRelay:
    """A TCP relay to the gateway that drops the connection (RST) after `cut_after` response bytes.

    One connection is relayed at a time; use it as a context manager. The
    client sees what a dropped network connection looks like: part of the
    body, then a reset.
    """

    def __init__(self, base_url: str, cut_after: int) -> None:
        self.upstream = split_base(base_url)
        self.cut_after = cut_after
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(RUN_TIMEOUT)
        self.relayed = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, target: str) -> str:
        return f"http://{HOST}:{self.listener.getsockname()[1]}{target}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.thread.join(RUN_TIMEOUT)

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.upstream, timeout=RUN_TIMEOUT)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ)
                selector.register(upstream, selectors.EVENT_READ)
                while self.relayed < self.cut_after:
                    ready = selector.select(timeout=RUN_TIMEOUT)
                    if not ready:
                        return
                    for key, _ in ready:
                        if key.fileobj is client:
                            data = client.recv(65536)
                            if not data:
                                return
                            upstream.sendall(data)
                        else:
                            data = upstream.recv(min(65536, self.cut_after - self.relayed))
                            if not data:
                                return
                            client.sendall(data)
                            self.relayed += len(data)
        finally:
            for sock in (client, upstream):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                sock.close()


@dataclass(frozen=True)
class AccessLog:
    gateway: Gateway
    offset: int

    def lines(self, gateway_path: str) -> list[dict[str, object]]:
        """JSON access-log lines (stdout; stderr shares the log file) for the link of `gateway_path`."""
        token = self.gateway.token(gateway_path)[:8]
        text = self.gateway.log_since(self.offset)
        found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return [line for line in found if line.get("token") == token]


def watch(gateway: Gateway) -> AccessLog:
    return AccessLog(gateway, gateway.log_size())


def assert_resumed_at(log: AccessLog, path: str, offset: int, total: int) -> None:
    """The resume asked for `bytes=offset-` and got a 206 carrying exactly the rest of the file.

    (The access-log line is written once the response is done: polled, bounded.)"""
    wanted = f"bytes={offset}-"
    resumes = poll(lambda: [line for line in log.lines(path) if line.get("range") == wanted], bool)
    assert resumes, f"no request for {wanted} in {log.lines(path)}"
    assert (resumes[-1]["status"], resumes[-1]["bytes"]) == (206, total - offset), resumes


# -- disk -------------------------------------------------------------------------------------


def curl_cut_by_the_network(gateway: Gateway, path: str, target: Path, total: int) -> int:
    """curl through a relay that drops the connection mid-body: curl reports the short
    transfer (exit 18, "partial file") and keeps what arrived; the partial size."""
    cut_after = 3 * MIB + 4321  # response bytes, headers included: the body stops a little before
    with CuttingRelay(gateway.base_url, cut_after) as relay:
        result = subprocess.run(
            [tool("curl"), "-sS", "-o", str(target), relay.url(gateway.target(path))],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    assert result.returncode in (18, 56), f"curl exited {result.returncode}: {result.stderr}"
    size = target.stat().st_size
    assert MIB < size < total, size
    return size


def test_curl_resumes_a_download_cut_in_the_middle(gateway: Gateway, storage: Storage, tmp_path: Path) -> None:
    curl, target, total = tool("curl"), tmp_path / "big.ogg", storage.size(P8M)
    cut = curl_cut_by_the_network(gateway, P8M, target, total)
    assert target.read_bytes() == storage.data(P8M)[:cut]
    log = watch(gateway)
    result = run([curl, "-sS", "-C", "-", "-o", str(target), "-w", "%{http_code}", gateway.link(P8M)])
    assert result.stdout == "206"
    assert sha256_of(target) == hashlib.sha256(storage.data(P8M)).hexdigest()
    assert_resumed_at(log, P8M, cut, total)


def test_curl_finishes_a_partial_range_download(gateway: Gateway, storage: Storage, tmp_path: Path) -> None:
    """`curl -r 0-N` writes the first part; `curl -C -` fetches the rest from there."""
    curl, url, target, total = tool("curl"), gateway.link(P8M), tmp_path / "big.ogg", storage.size(P8M)
    first = 3 * MIB + 12345
    run([curl, "-sS", "-r", f"0-{first - 1}", "-o", str(target), url])
    assert target.stat().st_size == first
    log = watch(gateway)
    run([curl, "-sS", "-C", "-", "-o", str(target), url])
    assert sha256_of(target) == hashlib.sha256(storage.data(P8M)).hexdigest()
    assert_resumed_at(log, P8M, first, total)


def test_wget_continues_a_download_cut_in_the_middle(gateway: Gateway, storage: Storage, tmp_path: Path) -> None:
    wget, url, target, total = tool("wget"), gateway.link(P8M), tmp_path / "big.ogg", storage.size(P8M)
    cut = cut_short([wget, "-q", f"--limit-rate={RATE}", "-O", str(target), url], target, total)
    log = watch(gateway)
    run([wget, "-q", "-c", "-O", str(target), url])
    assert sha256_of(target) == hashlib.sha256(storage.data(P8M)).hexdigest()
    assert_resumed_at(log, P8M, cut, total)


@pytest.mark.parametrize("client", ["curl", "wget"])
def test_resuming_a_complete_download_is_a_clean_no_op(
    gateway: Gateway, storage: Storage, tmp_path: Path, client: str
) -> None:
    """Resume of a file already whole: the gateway answers 416 with `bytes */SIZE`, which both
    clients take for "nothing left to fetch" (exit 0, file untouched)."""
    target = tmp_path / "big.ogg"
    target.write_bytes(storage.data(P8M))
    log = watch(gateway)
    if client == "curl":
        run([tool("curl"), "-sS", "-C", "-", "-o", str(target), gateway.link(P8M)])
    else:
        run([tool("wget"), "-q", "-c", "-O", str(target), gateway.link(P8M)])
    assert sha256_of(target) == hashlib.sha256(storage.data(P8M)).hexdigest()
    lines = poll(lambda: log.lines(P8M), bool)
    assert [(line["status"], line.get("range")) for line in lines] == [(416, f"bytes={storage.size(P8M)}-")]


def assert_split_download(log: AccessLog, path: str, total: int, least: int = 3) -> None:
    """aria2c fetched `path` over several connections, each a distinct range answered 206."""
    ranged = poll(lambda: [line for line in log.lines(path) if "range" in line], lambda found: len(found) >= least)
    starts = {str(line["range"]) for line in ranged}
    assert len(starts) >= least, f"{len(starts)} distinct ranges: {log.lines(path)}"
    assert all(line["status"] == 206 for line in ranged), ranged


def test_aria2c_downloads_with_four_parallel_ranges(gateway: Gateway, storage: Storage, tmp_path: Path) -> None:
    log = watch(gateway)
    run([tool("aria2c"), "-q", "-x4", "-s4", "--min-split-size=1M", "--file-allocation=none",
         "-d", str(tmp_path), "-o", "big.ogg", gateway.link(P8M)])  # fmt: skip
    assert sha256_of(tmp_path / "big.ogg") == hashlib.sha256(storage.data(P8M)).hexdigest()
    assert_split_download(log, P8M, storage.size(P8M))


def test_aria2c_resumes_a_download_cut_in_the_middle(gateway: Gateway, storage: Storage, tmp_path: Path) -> None:
    """aria2c keeps a control file (`.aria2`) next to the partial download and continues from it."""
    aria2c, url, total = tool("aria2c"), gateway.link(P8M), storage.size(P8M)
    target = tmp_path / "big.ogg"
    options = [
        "-q",
        "-x4",
        "-s4",
        "--min-split-size=1M",
        "--file-allocation=none",
        "-d",
        str(tmp_path),
        "-o",
        "big.ogg",
    ]
    process = subprocess.Popen(
        [aria2c, *options, "--max-overall-download-limit=1M", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    control = tmp_path / "big.ogg.aria2"
    try:
        # Let it run for a while (it writes into a file of the final size, so size says nothing).
        poll(lambda: process.poll(), lambda code: code is not None, timeout=2.5)
        assert process.poll() is None, "aria2c finished before it was cut"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert control.exists(), "aria2c left no control file to resume from"
    log = watch(gateway)
    run([aria2c, *options, "-c", url])
    assert not control.exists()
    assert sha256_of(target) == hashlib.sha256(storage.data(P8M)).hexdigest()
    # The access-log lines of the resumed run are written a moment after its requests end: polled, bounded.
    ranged = poll(lambda: [line for line in log.lines(P8M) if "range" in line], bool)
    assert ranged and all(line["status"] == 206 for line in ranged), log.lines(P8M)
    # It fetched the missing parts only, not the file again.
    assert sum(int(line["bytes"]) for line in ranged) < total + MIB


@pytest.mark.parametrize("client", ["wget", "aria2c"])
def test_download_manager_saves_under_the_cyrillic_name(
    gateway: Gateway, storage: Storage, tmp_path: Path, client: str
) -> None:
    """The name comes from Content-Disposition's `filename*=UTF-8''…` (the token says nothing)."""
    if client == "wget":
        run([tool("wget"), "-q", "--content-disposition", "-P", str(tmp_path), gateway.link(PCYR)])
    else:
        run([tool("aria2c"), "-q", "-d", str(tmp_path), gateway.link(PCYR)])
    saved = tmp_path / PCYR.lstrip("/")
    assert [path.name for path in tmp_path.iterdir()] == [saved.name]
    assert saved.read_bytes() == storage.data(PCYR)


# -- S3 ---------------------------------------------------------------------------------------

BUCKET = "downloads"
PREFIX = "archive"
S3_PATH = "/300/archived-8m.ogg"


@dataclass(frozen=True)
class S3Rig:
    gateway: Gateway
    data: bytes


@pytest.fixture(scope="module")
def s3_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Rig]:
    """moto holding an 8 MiB object, and a gateway whose only storage is that bucket."""
    workdir = tmp_path_factory.mktemp("download-managers-s3")
    with running_moto(workdir / "moto") as moto:
        s3 = s3_client(moto.endpoint_url)
        s3.create_bucket(Bucket=BUCKET)
        data = random_bytes(8 * MIB)
        s3.put_object(Bucket=BUCKET, Key=key_for(PREFIX, S3_PATH), Body=data)
        empty = workdir / "empty"
        empty.mkdir()
        with running_gateway(
            empty,
            [new_key()],
            workdir / "gateway",
            extra_env=gateway_s3_env(moto),
            storage_url=f"s3://{BUCKET}/{PREFIX}",
        ) as gateway:
            yield S3Rig(gateway, data)


def test_curl_resumes_an_s3_download_cut_in_the_middle(s3_rig: S3Rig, tmp_path: Path) -> None:
    curl, url, target, total = tool("curl"), s3_rig.gateway.link(S3_PATH), tmp_path / "s3.ogg", len(s3_rig.data)
    cut = curl_cut_by_the_network(s3_rig.gateway, S3_PATH, target, total)
    assert target.read_bytes() == s3_rig.data[:cut]
    log = watch(s3_rig.gateway)
    result = run([curl, "-sS", "-C", "-", "-o", str(target), "-w", "%{http_code}", url])
    assert result.stdout == "206"
    assert sha256_of(target) == hashlib.sha256(s3_rig.data).hexdigest()
    assert_resumed_at(log, S3_PATH, cut, total)


def test_aria2c_splits_an_s3_download(s3_rig: S3Rig, tmp_path: Path) -> None:
    log = watch(s3_rig.gateway)
    run([tool("aria2c"), "-q", "-x4", "-s4", "--min-split-size=1M", "--file-allocation=none",
         "-d", str(tmp_path), "-o", "s3.ogg", s3_rig.gateway.link(S3_PATH)])  # fmt: skip
    assert sha256_of(tmp_path / "s3.ogg") == hashlib.sha256(s3_rig.data).hexdigest()
    assert_split_download(log, S3_PATH, len(s3_rig.data))
    # The connection aria2c dropped early (its first, whole-file GET) left the gateway fine.
    again = tmp_path / "again.ogg"
    result = run([tool("curl"), "-sS", "-o", str(again), "-w", "%{http_code}", s3_rig.gateway.link(S3_PATH)])
    assert result.stdout == "200"
    assert sha256_of(again) == hashlib.sha256(s3_rig.data).hexdigest()
