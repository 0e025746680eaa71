#!/usr/bin/env python3
"""Sustained load on the gateway with wrk, optionally while many slow downloads run.

Creates a temporary storage (a 64 KiB and an 8 MiB random file), starts
`storage-gateway serve --workers 2` on a free local port with its default
settings (access log on, written to a file), checks that both files come
back byte-exact, then:

  plain mode:  wrk -t2 -c64 -d60s --latency against the 64 KiB file;
  --slow N:    N clients download the 8 MiB file slowly (paced, small receive
               buffers, each download checked by sha256 and started again when
               done) while wrk measures the 64 KiB requests of other users.

It prints requests/s, the latency percentiles, the errors (non-2xx/3xx
responses and socket errors: any one fails the run), the gateway's peak RSS
(VmHWM of each worker) and, with --slow, the slow downloads' outcome and
the workers' RSS growth while they ran. Results go to
bench/results/load-latest.json. Exit status 0 when the run was clean, 1 on
any error or wrong byte, 130 on Ctrl-C; servers and files are removed on
every exit path.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

from bench import (
    DEFAULT_GATEWAY_CMD,
    HOST,
    KIB,
    MIB,
    Server,
    WrkResult,
    judge,
    parse_wrk,
    peak_rss_kib,
    server_workers,
    sha256_of,
    start_gateway,
    stop,
    wait_until_up,
    write_random_file,
)

SMALL_NAME, SMALL_SIZE = "small-64k.mp3", 64 * KIB
BIG_NAME, BIG_SIZE = "big-8m.ogg", 8 * MIB
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "load-latest.json"
SLOW_RECEIVE_BUFFER = 32 * KIB
SLOW_RATE = 256 * KIB  # bytes/s per slow download: about 32 s for the 8 MiB file


# -- memory ---------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Sum of the processes' RSS, sampled in a thread; keeps the peak.

    `pids` is a list, or a function asked again at every sample (a process
    tree walked anew: pool processes may be replaced while it runs).
    """

    def __init__(self, pids: Iterable[int] | Callable[[], Iterable[int]], interval: float = 0.1) -> None:
        self.pids, self.interval = pids, interval
        self.baseline_kib = self._total()
        self.peak_kib = self.baseline_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _total(self) -> int:
        total = 0
        for pid in self.pids() if callable(self.pids) else self.pids:
            try:
                total += rss_kib(pid)
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, self._total())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak_kib = max(self.peak_kib, self._total())


# -- slow downloads ------------------------------------------------------------------


@dataclass
class SlowStats:
    clients: int
    rate_bytes_per_s: int
    started: int = 0  # clients that got their headers
    completed: int = 0  # downloads read to the end, byte-exact
    verified_bytes: int = 0  # bytes received and compared with the file, unfinished downloads included
    failed: int = 0
    problems: list[str] = field(default_factory=list)


class SlowDownloads:
    """N clients, each downloading the big file again and again at a paced rate, in a thread."""

    def __init__(self, server: Server, clients: int, rate: int, expected: bytes) -> None:
        self.url_path = server.paths[BIG_NAME]
        self.address = (HOST, int(server.base_url.rpartition(":")[2]))
        self.expected = memoryview(expected)
        self.stats = SlowStats(clients, rate)
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def wait_started(self, timeout: float) -> None:
        """Until every client has its first response headers (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.stats.started < self.stats.clients and time.monotonic() < deadline:
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._ready.wait(10)
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(60)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._ready.set()
        tasks = [asyncio.create_task(self._client()) for _ in range(self.stats.clients)]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self) -> None:
        first = True
        while True:
            try:
                await self._download(first)
                self.stats.completed += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 (counted and reported, the run fails)
                self.stats.failed += 1
                if len(self.stats.problems) < 10:
                    self.stats.problems.append(repr(exc))
                await asyncio.sleep(0.5)
            first = False

    async def _download(self, first: bool) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RECEIVE_BUFFER)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.address)
            request = f"GET {self.url_path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            await loop.sock_sendall(sock, request.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await loop.sock_recv(sock, 65536)
                if not chunk:
                    raise RuntimeError("closed before the headers")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise RuntimeError(f"status {status}")
            if first:
                self.stats.started += 1
            received, started = 0, time.monotonic()
            rate = self.stats.rate_bytes_per_s
            while True:
                # Every byte is compared with the file as it arrives, so a download cut short
                # when the run ends still counts what it verified.
                if body != self.expected[received : received + len(body)]:
                    raise RuntimeError(f"wrong bytes at offset {received}")
                received += len(body)
                self.stats.verified_bytes += len(body)
                if received >= BIG_SIZE:
                    break
                ahead = started + received / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
                body = await loop.sock_recv(sock, SLOW_RECEIVE_BUFFER)
                if not body:
                    raise RuntimeError(f"closed after {received} of {BIG_SIZE} bytes")
        finally:
            sock.close()


# -- wrk -------------------------------------------------------------------------------


def run_wrk(args: argparse.Namespace, url: str, connections: int, threads: int) -> WrkResult:
    command = [args.wrk, f"-t{threads}", f"-c{connections}", f"-d{args.duration:g}s", "--latency"]
    command += ["--timeout", args.timeout, url]
    result = WrkResult(command)
    completed = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=args.duration + 120, check=False
    )
    result.output = completed.stdout + completed.stderr
    parse_wrk(result.output, result)
    judge(result, completed.returncode)
    return result


def ms(value: float | None) -> str:
    return "?" if value is None else f"{value * 1000:.2f} ms"


def print_wrk(result: WrkResult) -> None:
    print(f"  command:      {' '.join(result.command)}")
    print(f"  requests:     {result.requests:,} ({result.requests_per_sec:,.0f} req/s, "
          f"{result.bytes_per_sec / MIB:,.1f} MiB/s)")  # fmt: skip
    percentiles = "  ".join(f"{name} {ms(value)}" for name, value in result.latency_percentiles_s.items())
    print(f"  latency:      avg {ms(result.latency_avg_s)}  {percentiles}  max {ms(result.latency_max_s)}")
    socket_errors = sum(result.socket_errors.values())
    print(f"  errors:       non-2xx/3xx {result.non_2xx_3xx}, socket {socket_errors} {result.socket_errors or ''}")
    print(f"  verdict:      {'OK' if result.ok else 'FAILED: ' + '; '.join(result.problems)}")


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds wrk runs (default 60)")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64; --slow: 4)")
    parser.add_argument("--timeout", default="5s", help="wrk's socket timeout; a timeout counts as an error")
    parser.add_argument("--slow", type=int, default=0, metavar="N", help="N slow downloads of the 8 MiB file meanwhile")
    parser.add_argument(
        "--slow-rate",
        type=int,
        default=SLOW_RATE,
        metavar="BYTES",
        help=f"bytes/s per slow download (default {SLOW_RATE})",
    )
    parser.add_argument("--no-access-log", action="store_true", help="GATEWAY_ACCESS_LOG=false (default: on)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help=f"JSON results (default {RESULTS_FILE})")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    parser.add_argument(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        metavar="CMD",
        help=f"command that starts the gateway, {{host}} {{port}} {{workers}} substituted (default {DEFAULT_GATEWAY_CMD!r})",
    )
    args = parser.parse_args(argv)
    if not Path(args.wrk).exists():
        parser.error("wrk not found (apt-get install wrk)")
    if args.slow and "--connections" not in (argv if argv is not None else sys.argv):
        args.connections = 4  # a few other users, not a flood: their latency is the point
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    gateway: Server | None = None
    try:
        storage = workdir / "storage"
        storage.mkdir()
        digests = {
            SMALL_NAME: write_random_file(storage / SMALL_NAME, SMALL_SIZE),
            BIG_NAME: write_random_file(storage / BIG_NAME, BIG_SIZE),
        }
        gateway = start_gateway(
            args.gateway_cmd,
            args.workers,
            workdir,
            storage,
            names=(SMALL_NAME, BIG_NAME),
            access_log=not args.no_access_log,
        )
        wait_until_up(gateway)
        for name, digest in digests.items():
            if sha256_of(gateway.url(name)) != digest:
                raise RuntimeError(f"the gateway returned the wrong bytes for {name}")
        workers = server_workers(gateway)
        print(f"gateway at {gateway.base_url}, {len(workers)} workers {workers}: bytes verified", flush=True)
        time.sleep(1.0)  # the workers settle before the baseline

        report: dict[str, object] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "workers": args.workers,
            "access_log": not args.no_access_log,
            "small_file_bytes": SMALL_SIZE,
        }
        slow: SlowDownloads | None = None
        with RssSampler(workers) as sampler:
            if args.slow:
                slow = SlowDownloads(gateway, args.slow, args.slow_rate, (storage / BIG_NAME).read_bytes())
                slow.__enter__()
                slow.wait_started(60)
                print(f"{slow.stats.started} of {args.slow} slow downloads running "
                      f"({args.slow_rate / KIB:.0f} KiB/s each)", flush=True)  # fmt: skip
            try:
                what = f"{args.duration:g} s of GET {SMALL_NAME}"
                print(f"wrk: {what}, {args.threads} threads, {args.connections} connections ...", flush=True)
                result = run_wrk(args, gateway.url(SMALL_NAME), args.connections, args.threads)
            finally:
                if slow is not None:
                    slow.__exit__(None, None, None)
        peaks = {str(pid): peak_rss_kib(pid) for pid in workers}

        print()
        print(f"small requests ({what}{', during the slow downloads' if args.slow else ''}):")
        print_wrk(result)
        print(f"gateway peak RSS (VmHWM): {', '.join(f'{kib / KIB:.1f} MiB' for kib in peaks.values())} "
              f"(workers {', '.join(peaks)}); total {sum(peaks.values()) / KIB:.1f} MiB")  # fmt: skip
        print(f"workers' RSS during the run: {sampler.baseline_kib / KIB:.1f} MiB before, "
              f"peak {sampler.peak_kib / KIB:.1f} MiB (+{(sampler.peak_kib - sampler.baseline_kib) / KIB:.1f} MiB)")  # fmt: skip
        ok = result.ok
        report["wrk"] = {key: value for key, value in asdict(result).items() if key != "output"}
        report["wrk_output"] = result.output
        report["peak_rss_kib"] = peaks
        report["rss_during_run_kib"] = {"before": sampler.baseline_kib, "peak": sampler.peak_kib}
        if slow is not None:
            stats = slow.stats
            print(f"slow downloads: {stats.clients} clients, {stats.completed} completed, "
                  f"{stats.verified_bytes / MIB:,.0f} MiB received and byte-exact, "
                  f"{stats.failed} failed{': ' + '; '.join(stats.problems) if stats.problems else ''}")  # fmt: skip
            report["slow"] = asdict(stats)
            ok = ok and stats.failed == 0 and stats.started == stats.clients
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\n{'CLEAN' if ok else 'FAILED'}; results written to {args.output}")
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gateway is not None:
            stop(gateway.process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
