"""A real S3 endpoint for the S3 tests: moto in server mode, as its own process.

moto runs as a separate process (`python -m moto.server`), in its own
session, so a test can pause it (SIGSTOP: connections are accepted by the
kernel but nothing answers), resume it (SIGCONT) or kill it outright, and
see what the gateway does. Also here: the environment that points a gateway
at it, and a boto3 client for arranging buckets and objects (a process's TCP
connections to it are read with `support.proc`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from botocore.config import Config

from .http import HOST
from .processes import START_TIMEOUT, LoggedProcess, free_port

# Credentials moto accepts (it does not check them); the gateway gets the same.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Fault tests: fail fast, no retries, so a stopped S3 costs seconds, not minutes.
FAST_FAILURE_ENV = {
    "GATEWAY_S3_CONNECT_TIMEOUT": "1",
    "GATEWAY_S3_READ_TIMEOUT": "2",
    "GATEWAY_S3_MAX_ATTEMPTS": "1",
}


@dataclass
class MotoServer(LoggedProcess):
    """A running moto server process (S3 at `endpoint_url`)."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pause(self) -> None:
        """SIGSTOP: the listening socket still completes handshakes, but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, like a crash: the kernel closes every connection."""
        stop_moto(self)

    def requests_since(self, offset: int, method: str, key: str) -> list[int]:
        """Statuses of the `method` requests moto logged for `key` (an ASCII key) since `offset`."""
        pattern = re.compile(rf'"{method} /[^/ ]+/{re.escape(quote(key, safe="/"))}(?:\?\S*)? HTTP/1\.1" (\d{{3}})')
        return [int(match[1]) for match in pattern.finditer(self.log_since(offset))]


def moto_environment() -> dict[str, str]:
    """os.environ without AWS or proxy settings that could reroute or refuse test traffic."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(AWS_ENV)
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    return env


def _answers(port: int) -> bool:
    """Whether moto answers ListBuckets on `port` (any HTTP status counts as up)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def start_moto(workdir: Path) -> MotoServer:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"moto-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            env=moto_environment(),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MotoServer(process, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with status {process.returncode}:\n{log.read_text(errors='replace')}")
        if _answers(port):
            return server
        time.sleep(0.05)
    stop_moto(server)
    raise RuntimeError(f"moto did not answer on port {port} within {START_TIMEOUT}s:\n{log.read_text()[-4000:]}")


def stop_moto(server: MotoServer) -> None:
    """SIGCONT (a paused process cannot act on anything else), then SIGKILL the group; moto keeps no state."""
    if server.process.poll() is not None:
        return
    for signum in (signal.SIGCONT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signum)
    server.process.wait(10.0)


@contextlib.contextmanager
def running_moto(workdir: Path) -> Iterator[MotoServer]:
    server = start_moto(workdir)
    try:
        yield server
    finally:
        stop_moto(server)


def s3_client(endpoint_url: str) -> Any:
    """A boto3 client for arranging test data (not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, proxies={}),
    )


def gateway_s3_env(server: MotoServer, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a gateway needs to talk to `server` (endpoint and credentials), plus `extra`."""
    env = dict(AWS_ENV)  # environment credentials come first in botocore's chain
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    env["GATEWAY_S3_ENDPOINT_URL"] = server.endpoint_url
    env.update(extra or {})
    return env


def storage_urls(*urls: str) -> str:
    return ",".join(urls)


def key_for(prefix: str, path: str) -> str:
    """The S3 key the gateway reads for storage path `path` under `prefix` (no slashes at its ends)."""
    return f"{prefix}/{path.lstrip('/')}" if prefix else path.lstrip("/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(size: int) -> bytes:
    """`size` random bytes, generated in slices (os.urandom is slow on one huge call on some kernels)."""
    return b"".join(os.urandom(min(1 << 20, size - at)) for at in range(0, size, 1 << 20))
