#!/usr/bin/env python3
"""Benchmark the gateway's S3 path against reading the same object from S3 directly.

Starts a moto server (S3, in server mode) on a free local port, puts one
random object (64 MiB by default) in a bucket, and starts the gateway
(`storage-gateway serve --workers 2`) with that bucket as its only storage.
After checking that both paths return the right bytes, it measures, the two
paths interleaved round by round:

  1. single-stream throughput, MiB/s: the whole object read directly with
     aioboto3 (`get_object`, one long-lived client in this process) vs. the
     same object through the gateway with http.client (body read into a
     discarded buffer);
  2. ranged requests: median latency of N sequential 64 KiB ranged GETs at
     random offsets (the same offsets on both paths), direct aioboto3 vs.
     through the gateway on one keep-alive connection. For reference it also
     times, directly, the S3 calls the gateway makes for one request (HEAD,
     then the ranged GET pinned with If-Match), which separates S3 round
     trips from the gateway's own cost.

moto is slow (it is Python, and copies the object for every ranged read):
the absolute numbers say little, the ratio and the difference are the
point. Targets: gateway throughput >= 70% of direct; a ranged request adds
< 5 ms median over a direct ranged GET. Results go to
bench/results/s3-latest.json. Exit status 1 if a path returned wrong bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import boto3
from aiobotocore.config import AioConfig

from bench import KEY_BYTES, make_token

KIB = 1024
MIB = 1024 * KIB
HOST = "127.0.0.1"
BUCKET = "bench"
PREFIX = "archive"
OBJECT_PATH = "/large-object.ogg"  # the storage path inside the link token
READ_CHUNK = 256 * KIB  # the gateway's default chunk size: both paths read in the same steps
THROUGHPUT_TARGET = 0.70
RANGE_TARGET_MS = 5.0
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "s3-latest.json"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


# -- processes -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment without GATEWAY_*, AWS_* and proxy settings, plus the bench credentials."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("GATEWAY_", "AWS_")) and name.lower() not in ("http_proxy", "https_proxy")
    }
    env.update(AWS_ENV)
    env["NO_PROXY"] = env["no_proxy"] = f"{HOST},localhost"
    return env


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the process group, then KILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no output)"


def http_get(port: int, target: str, headers: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(
    name: str, process: subprocess.Popen[bytes], port: int, target: str, log: Path, timeout: float = 30.0
) -> None:
    """Poll `target` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            if http_get(port, target, timeout=2.0)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer {target} within {timeout:.0f}s:\n{tail(log)}")


@contextlib.contextmanager
def running(name: str, command: list[str], env: dict[str, str], port: int, probe: str, log: Path) -> Iterator[None]:
    process = start(command, log, env)
    try:
        wait_for(name, process, port, probe, log)
        yield
    finally:
        stop(process)


# -- the two paths ------------------------------------------------------------------


@dataclass
class Setup:
    size: int
    sha256: str
    endpoint: str
    gateway_port: int
    target: str  # the gateway's /<token>

    @property
    def key(self) -> str:
        return f"{PREFIX}/{OBJECT_PATH.lstrip('/')}"


def put_object(endpoint: str, size: int) -> str:
    """Create the bucket and a `size`-byte random object; return its sha256."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"], **_credentials())
    client.create_bucket(Bucket=BUCKET)
    data = b"".join(os.urandom(min(MIB, size - at)) for at in range(0, size, MIB))
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{OBJECT_PATH.lstrip('/')}", Body=data)
    return hashlib.sha256(data).hexdigest()


def _credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    }


class Direct:
    """aioboto3 in this process: one client for every measurement, as a gateway worker has."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        session = aioboto3.Session(region_name=AWS_ENV["AWS_DEFAULT_REGION"], **_credentials())
        config = AioConfig(max_pool_connections=64, retries={"total_max_attempts": 1}, read_timeout=60)
        self.client = self.loop.run_until_complete(
            self._stack.enter_async_context(session.client("s3", endpoint_url=endpoint, config=config))
        )

    def close(self) -> None:
        self.loop.run_until_complete(self._stack.aclose())
        self.loop.close()

    def read(self, key: str, byte_range: str | None = None, digest: Any = None) -> tuple[int, float]:
        """(bytes read, seconds) of one get_object, its body read in READ_CHUNK steps."""
        return self.loop.run_until_complete(self._read(key, byte_range, digest))

    def head_then_read(self, key: str, byte_range: str) -> tuple[int, float]:
        """What the gateway asks S3 for one ranged request: HEAD, then a GET pinned to the ETag."""
        return self.loop.run_until_complete(self._read(key, byte_range, None, head_first=True))

    async def _read(self, key: str, byte_range: str | None, digest: Any, head_first: bool = False) -> tuple[int, float]:
        started = time.perf_counter()
        extra = {"Range": byte_range} if byte_range else {}
        if head_first:
            head = await self.client.head_object(Bucket=BUCKET, Key=key)
            extra["IfMatch"] = head["ETag"]
        response = await self.client.get_object(Bucket=BUCKET, Key=key, **extra)
        body = response["Body"]
        total = 0
        async with body:
            while chunk := await body.read(READ_CHUNK):
                total += len(chunk)
                if digest is not None:
                    digest.update(chunk)
        return total, time.perf_counter() - started


class ViaGateway:
    """http.client against the gateway, on one keep-alive connection."""

    def __init__(self, port: int, target: str) -> None:
        self.target = target
        self.conn = http.client.HTTPConnection(HOST, port, timeout=120)
        self.buffer = bytearray(READ_CHUNK)

    def close(self) -> None:
        self.conn.close()

    def read(self, byte_range: str | None = None, digest: Any = None) -> tuple[int, float, int]:
        """(bytes read, seconds, status) of one GET, its body read into a reused buffer and discarded."""
        view = memoryview(self.buffer)
        started = time.perf_counter()
        self.conn.request("GET", self.target, headers={"Range": byte_range} if byte_range else {})
        response = self.conn.getresponse()
        total = 0
        while count := response.readinto(view):
            total += count
            if digest is not None:
                digest.update(view[:count])
        return total, time.perf_counter() - started, response.status


# -- measurements ---------------------------------------------------------------------


def verify(setup: Setup, direct: Direct, gateway: ViaGateway) -> None:
    """Both paths return the object exactly, whole and as a range."""
    digest = hashlib.sha256()
    size, _ = direct.read(setup.key, digest=digest)
    if (size, digest.hexdigest()) != (setup.size, setup.sha256):
        raise RuntimeError(f"direct read returned {size} bytes, sha256 {digest.hexdigest()}")
    digest = hashlib.sha256()
    size, _, status = gateway.read(digest=digest)
    if (status, size, digest.hexdigest()) != (200, setup.size, setup.sha256):
        raise RuntimeError(f"gateway returned {status}, {size} bytes, sha256 {digest.hexdigest()}")
    start = setup.size // 3
    byte_range = f"bytes={start}-{start + 64 * KIB - 1}"
    direct_digest, gateway_digest = hashlib.sha256(), hashlib.sha256()
    direct.read(setup.key, byte_range, direct_digest)
    _, _, status = gateway.read(byte_range, gateway_digest)
    if status != 206 or direct_digest.hexdigest() != gateway_digest.hexdigest():
        raise RuntimeError(f"ranged GET through the gateway: status {status}, bytes differ from S3's")


def throughput(setup: Setup, direct: Direct, gateway: ViaGateway, rounds: int) -> dict[str, Any]:
    """MiB/s of whole-object reads, direct and through the gateway, alternating."""
    direct_rates, gateway_rates = [], []
    for number in range(1, rounds + 1):
        size, seconds = direct.read(setup.key)
        direct_rates.append(size / MIB / seconds)
        size, seconds, status = gateway.read()
        if status != 200 or size != setup.size:
            raise RuntimeError(f"gateway round {number}: status {status}, {size} bytes")
        gateway_rates.append(size / MIB / seconds)
        print(
            f"  round {number}: direct {direct_rates[-1]:7.1f} MiB/s   gateway {gateway_rates[-1]:7.1f} MiB/s",
            flush=True,
        )
    direct_median, gateway_median = statistics.median(direct_rates), statistics.median(gateway_rates)
    return {
        "direct_mib_s": direct_rates,
        "gateway_mib_s": gateway_rates,
        "direct_median_mib_s": direct_median,
        "gateway_median_mib_s": gateway_median,
        "ratio": gateway_median / direct_median,
        "target": THROUGHPUT_TARGET,
    }


def ranged(setup: Setup, direct: Direct, gateway: ViaGateway, count: int, length: int, seed: int) -> dict[str, Any]:
    """Latency of sequential ranged GETs at the same random offsets, direct and through the gateway."""
    rng = random.Random(seed)
    offsets = [rng.randrange(0, setup.size - length) for _ in range(count)]
    warmup = offsets[:10]
    for offset in warmup:
        direct.read(setup.key, f"bytes={offset}-{offset + length - 1}")
        gateway.read(f"bytes={offset}-{offset + length - 1}")
    direct_ms, gateway_ms, head_get_ms = [], [], []
    for offset in offsets:  # interleaved, so drift on the host affects all alike
        byte_range = f"bytes={offset}-{offset + length - 1}"
        size, seconds = direct.read(setup.key, byte_range)
        if size != length:
            raise RuntimeError(f"direct ranged read returned {size} bytes")
        direct_ms.append(seconds * 1000)
        size, seconds = direct.head_then_read(setup.key, byte_range)
        if size != length:
            raise RuntimeError(f"direct HEAD + ranged read returned {size} bytes")
        head_get_ms.append(seconds * 1000)
        size, seconds, status = gateway.read(byte_range)
        if (status, size) != (206, length):
            raise RuntimeError(f"gateway ranged read: status {status}, {size} bytes")
        gateway_ms.append(seconds * 1000)

    def p90(values: list[float]) -> float:
        return statistics.quantiles(values, n=10)[-1]

    direct_median, gateway_median = statistics.median(direct_ms), statistics.median(gateway_ms)
    return {
        "count": count,
        "length": length,
        "direct_median_ms": direct_median,
        "gateway_median_ms": gateway_median,
        "direct_p90_ms": p90(direct_ms),
        "gateway_p90_ms": p90(gateway_ms),
        "added_median_ms": gateway_median - direct_median,
        "target_added_ms": RANGE_TARGET_MS,
        # The same S3 calls the gateway makes (HEAD, then the ranged GET), made directly:
        # the part of the added time that is S3 round trips rather than the gateway itself.
        "direct_head_get_median_ms": statistics.median(head_get_ms),
        "gateway_over_head_get_median_ms": gateway_median - statistics.median(head_get_ms),
    }


def print_report(size: int, flow: dict[str, Any], ranges: dict[str, Any]) -> None:
    flow_ok = flow["ratio"] >= flow["target"]
    range_ok = ranges["added_median_ms"] < ranges["target_added_ms"]
    stream_label = f"{size // MIB} MiB single stream (median)"
    range_label = f"{ranges['length'] // KIB} KiB ranged GET (median of {ranges['count']})"
    flow_target = f">= {flow['target']:.0%}"
    range_target = f"< {ranges['target_added_ms']:g} ms"
    print()
    print(f"{'metric':<36}{'direct':>14}{'gateway':>14}{'gateway vs direct':>20}{'target':>10}  result")
    print("-" * 102)
    print(
        f"{stream_label:<36}{flow['direct_median_mib_s']:>8.1f} MiB/s{flow['gateway_median_mib_s']:>8.1f} MiB/s"
        f"{flow['ratio']:>20.1%}{flow_target:>10}  {'PASS' if flow_ok else 'BELOW'}"
    )
    print(
        f"{range_label:<36}{ranges['direct_median_ms']:>11.2f} ms{ranges['gateway_median_ms']:>11.2f} ms"
        f"{ranges['added_median_ms']:>+17.2f} ms{range_target:>10}  {'PASS' if range_ok else 'BELOW'}"
    )
    print(f"\nranged GET p90: direct {ranges['direct_p90_ms']:.2f} ms, gateway {ranges['gateway_p90_ms']:.2f} ms")
    print(
        f"the gateway's S3 calls per ranged request (HEAD, then GET If-Match), made directly: "
        f"median {ranges['direct_head_get_median_ms']:.2f} ms; the gateway adds "
        f"{ranges['gateway_over_head_get_median_ms']:+.2f} ms over those"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--size-mib", type=int, default=64, metavar="N", help="object size in MiB (default 64)")
    add("--rounds", type=int, default=5, metavar="N", help="whole-object reads per path (default 5)")
    add("--ranges", type=int, default=200, metavar="N", help="ranged GETs per path (default 200)")
    add("--range-kib", type=int, default=64, metavar="N", help="length of each range in KiB (default 64)")
    add("--workers", type=int, default=2, metavar="N", help="gateway worker processes (default 2)")
    add("--seed", type=int, default=1, help="seed for the range offsets (default 1)")
    add("--output", type=Path, default=RESULTS_FILE, metavar="FILE", help="JSON results (bench/results/s3-latest.json)")
    args = parser.parse_args(argv)
    if min(args.size_mib, args.rounds, args.ranges, args.range_kib, args.workers) < 1:
        parser.error("every count must be at least 1")
    if args.range_kib * KIB >= args.size_mib * MIB:
        parser.error("--range-kib must be smaller than the object")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        work = Path(tmp)
        env = clean_env()
        moto_port, gateway_port = free_port(), free_port()
        endpoint = f"http://{HOST}:{moto_port}"
        moto_cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(moto_port)]
        print(f"moto on {endpoint}; putting a {args.size_mib} MiB object", flush=True)
        with running("moto", moto_cmd, env, moto_port, "/", work / "moto.log"):
            digest = put_object(endpoint, size)
            key = secrets.token_bytes(KEY_BYTES)
            gateway_env = dict(
                env,
                GATEWAY_KEY=key.hex(),
                GATEWAY_STORAGE=f"s3://{BUCKET}/{PREFIX}",
                GATEWAY_S3_ENDPOINT_URL=endpoint,
                GATEWAY_ACCESS_LOG="false",
            )
            gateway_cmd = ["storage-gateway", "serve", "--host", HOST, "--port", str(gateway_port)]
            gateway_cmd += ["--workers", str(args.workers)]
            print(f"gateway on http://{HOST}:{gateway_port} ({args.workers} workers, S3 storage only)", flush=True)
            with running("gateway", gateway_cmd, gateway_env, gateway_port, "/readyz", work / "gateway.log"):
                setup = Setup(size, digest, endpoint, gateway_port, "/" + make_token(OBJECT_PATH, key))
                direct, gateway = Direct(endpoint), ViaGateway(gateway_port, setup.target)
                try:
                    try:
                        verify(setup, direct, gateway)
                    except RuntimeError as exc:
                        print(f"bench_s3: wrong bytes: {exc}", file=sys.stderr)
                        return 1
                    print(f"bytes verified; single stream, {args.rounds} rounds each:", flush=True)
                    flow = throughput(setup, direct, gateway, args.rounds)
                    print(f"ranged GETs: {args.ranges} x {args.range_kib} KiB each way", flush=True)
                    ranges = ranged(setup, direct, gateway, args.ranges, args.range_kib * KIB, args.seed)
                finally:
                    gateway.close()
                    direct.close()
    print_report(size, flow, ranges)
    report = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "object_mib": args.size_mib,
            "rounds": args.rounds,
            "ranges": args.ranges,
            "range_kib": args.range_kib,
            "gateway_workers": args.workers,
            "seed": args.seed,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "s3": "moto server (python -m moto.server)",
        },
        "single_stream": flow,
        "ranged": ranges,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
