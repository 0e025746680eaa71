#!/usr/bin/env python3
"""Benchmark the listening ledger (issue 16).

1. Request rate of 64 KiB GETs with the ledger on, as a share of the rate
   with it off (target: at least 95%): the median of the pairs' ratios.
   Two gateways in turn (`storage-gateway serve --workers 2`, access log
   on, written to a file), the same file, wrk interleaved (off, on, on, off,
   …: neither always goes first). Also the CPU time a request costs, the
   whole server counted (workers, the ledger's helper processes), which
   other load on the host disturbs less than rates. With the ledger on
   every request is recorded and delivered, during the run, to a local
   receiver (another process, checking every signature and counting events
   by line rather than parsing them: it shares the host); afterwards every
   request must have arrived as an event.
2. Delivery throughput: an outbox filled with realistic `access` events,
   in chunks of 100 (what a worker commits in 100 ms at 1,000 requests a
   second), then one deliverer (this process) POSTs them in batches to the
   local receiver; events per second from its start until the outbox is
   empty (target: at least 5,000/s).

Reuses bench.py's process and wrk helpers; prints a table and writes
bench/results/ledger-latest.json. Exit status 1 when a run failed or an
event went missing.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import bench as core
from gateway.links.tokens import encrypt_path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "ledger-latest.json"
SECRET = "bench-" + secrets.token_hex(16)


# -- the receiver (a process of its own: `bench_ledger.py --receive PORT`) --------------------


def receive(port: int, secret: bytes) -> None:
    """A webhook receiver: checks each signature, counts the events; GET /count says how many (and bad ones)."""
    counted = {"events": 0, "bad": 0, "deliveries": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = -1  # the head and the body in one write: no delayed-ACK stall of 40 ms an answer

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fields = dict(item.split("=", 1) for item in self.headers.get("X-Gateway-Signature", "").split(","))
            expected = hmac.new(secret, fields.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
            good = hmac.compare_digest(expected, fields.get("v1", ""))
            events = body.count(b"\n") - 1  # one event a line: cheaper than parsing, the receiver shares the host
            with lock:
                counted["deliveries"] += 1
                counted["events" if good else "bad"] += events
            self._answer(200 if good else 400, b"{}")

        def do_GET(self) -> None:
            with lock:
                self._answer(200, json.dumps(counted).encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer((core.HOST, port), Handler).serve_forever()


def start_receiver(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = core.free_port()
    command = [sys.executable, __file__, "--receive", str(port)]
    env = {**os.environ, "BENCH_LEDGER_SECRET": SECRET}
    process = core.start(command, work / "receiver.log", env=env)
    base = f"http://{core.HOST}:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            received(base)
            return process, base
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the receiver did not start:\n{core.tail(work / 'receiver.log')}")


def received(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/count", timeout=5) as response:
        return json.loads(response.read())


def wait_for(base: str, events: int, timeout: float = 120.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counted = received(base)
        if counted["events"] >= events or time.monotonic() > deadline:
            return counted
        time.sleep(0.2)


# -- 1. request rate, ledger off and on --------------------------------------------------------


def start_gateway(name: str, work: Path, storage: Path, key: bytes, workers: int, extra: dict[str, str]) -> core.Server:
    port = core.free_port()
    env = core.gateway_env(key, storage)
    env.update(GATEWAY_ACCESS_LOG="true", GATEWAY_TRANSCODE_CACHE_DIR=str(work / f"{name}-renditions"), **extra)
    log = work / f"{name}.log"
    command = shlex.split(f"storage-gateway serve --host {core.HOST} --port {port} --workers {workers}")
    server = core.Server(name, core.start(command, log, env=env), f"http://{core.HOST}:{port}", {}, "/healthz", log)
    core.wait_until_up(server)
    return server


def cpu_seconds(root: int) -> float:
    """CPU time used so far by a server and every process under it (workers, the ledger's helpers, pools)."""
    total = 0
    for pid in [root, *core.descendants(root, core.process_table())]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, connections: int) -> core.WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    result = core.WrkResult(command)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    result.output = done.stdout + done.stderr
    core.parse_wrk(result.output, result)
    core.judge(result, done.returncode)
    return result


def request_rates(args: argparse.Namespace, work: Path, receiver: str) -> dict[str, Any]:
    storage = work / "storage"
    storage.mkdir()
    (storage / "call.mp3").write_bytes(secrets.token_bytes(64 * core.KIB))
    key = secrets.token_bytes(32)
    target = "/" + encrypt_path("/call.mp3", key)
    ledger = {
        "GATEWAY_WEBHOOK_URLS": receiver + "/hook",
        "GATEWAY_WEBHOOK_SECRET": SECRET,
        "GATEWAY_LEDGER_DIR": str(work / "ledger"),
    }
    servers = {
        "off": start_gateway("off", work, storage, key, args.workers, {}),
        "on": start_gateway("on", work, storage, key, args.workers, ledger),
    }
    runs: dict[str, list[core.WrkResult]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # microseconds of CPU a request, the whole server
    try:
        warmed = {
            name: wrk(server.base_url + target, args.warmup, args.connections) for name, server in servers.items()
        }
        before = wait_for(receiver, warmed["on"].requests, 30)["events"]  # the warm-up's events delivered
        for number in range(args.rounds):
            for name in ("off", "on") if number % 2 == 0 else ("on", "off"):  # neither always goes first
                started = cpu_seconds(servers[name].process.pid)
                runs[name].append(wrk(servers[name].base_url + target, args.duration, args.connections))
                time.sleep(0.5)  # the helper's last commits and deliveries of the run
                used = cpu_seconds(servers[name].process.pid) - started
                cpu[name].append(used / max(runs[name][-1].requests, 1) * 1e6)
        requests_on = sum(run.requests for run in runs["on"])
        counted = wait_for(receiver, before + requests_on)
    finally:
        for server in servers.values():
            core.stop(server.process)
    rates = {name: [run.requests_per_sec for run in results] for name, results in runs.items()}
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True) if off]
    arrived = counted["events"] - before
    return {
        "rates": rates,
        "ratios": ratios,
        "ratio_median": statistics.median(ratios) if ratios else None,
        "cpu_us_per_request": cpu,
        "cpu_us_per_request_median": {name: statistics.median(values) for name, values in cpu.items() if values},
        "requests_with_ledger": requests_on,
        "events_arrived": arrived,
        "bad_signatures": counted["bad"],
        "failed": [
            " ".join(run.command) + ": " + "; ".join(run.problems) for rs in runs.values() for run in rs if not run.ok
        ],
    }


# -- 2. delivery throughput -------------------------------------------------------------------


def delivery_throughput(args: argparse.Namespace, work: Path, receiver: str) -> dict[str, Any]:
    from gateway.ledger import Access, Delivery
    from gateway.ledger.delivery import Deliverer
    from gateway.ledger.events import encode_accesses
    from gateway.ledger.outbox import Outbox
    from gateway.ledger.stats import Stats

    directory = work / "throughput"
    directory.mkdir(mode=0o700)
    outbox = Outbox(directory, args.events * 2, args.batch_size)
    now = time.time()
    records = []
    for n in range(args.events):
        start = 65536 * n % 900000
        records.append(Access(now + n / 1000, 0.0021, "GET", 206, 65536, secrets.token_urlsafe(16), "/300/call.wav",
                              "file:///var/lib/recordings", "disk", 960044, ((start, start + 65536),), True,
                              {"inline": True, "rendition": False}, True, "203.0.113.7",
                              "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36", None, None, None))  # fmt: skip
        if len(records) == 100:  # what a worker's helper commits in 100 ms at 1,000 requests a second
            outbox.append(*encode_accesses(records, lambda token: "2d360385bcc81c011c227d9088972bf0", "b"), 300, "b")
            records = []
    outbox.append(*encode_accesses(records, lambda token: "2d360385bcc81c011c227d9088972bf0", "b"), 300, "b")
    size = (directory / "outbox.sqlite3").stat().st_size
    before = received(receiver)["events"]
    delivery = Delivery((receiver + "/hook",), SECRET.encode(), args.batch_size, 10.0, 0.05, 1.0)
    deliverer = Deliverer(directory, delivery, args.events * 2, 300, Stats(), lambda committed: None)
    started = time.perf_counter()
    deliverer.start()
    try:
        while outbox.pending() and time.perf_counter() - started < 300:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
    finally:
        deliverer.stop()
        outbox.close()
    counted = wait_for(receiver, before + args.events, 10)
    return {
        "events": args.events,
        "batch_size": args.batch_size,
        "seconds": elapsed,
        "events_per_second": args.events / elapsed,
        "events_arrived": counted["events"] - before,
        "outbox_bytes_per_event": size / args.events,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before measuring (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved off/on pairs (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers (default 2)")
    parser.add_argument("--events", type=int, default=100_000, help="events in the throughput run (default 100000)")
    parser.add_argument("--batch-size", type=int, default=500, help="events per delivery (default 500)")
    parser.add_argument("--receive", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receive:
        receive(args.receive, os.environ["BENCH_LEDGER_SECRET"].encode())
        return 0

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        work = Path(tmp)
        process, receiver = start_receiver(work)
        try:
            rates = request_rates(args, work, receiver)
            throughput = delivery_throughput(args, work, receiver)
        finally:
            core.stop(process)
    report = {"load_before": load, "load_after": os.getloadavg(), "requests": rates, "delivery": throughput}
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(report, indent=2) + "\n")
    off, on, ratio = rates["rates"]["off"], rates["rates"]["on"], rates["ratio_median"]
    print(f"64 KiB GET, ledger off      : {' '.join(f'{r:,.0f}' for r in off)} req/s")
    print(f"64 KiB GET, ledger on       : {' '.join(f'{r:,.0f}' for r in on)} req/s")
    if ratio is not None:
        print(f"on / off, median of pairs   : {ratio:8.1%}  (target >= 95%)  {'PASS' if ratio >= 0.95 else 'BELOW'}")
    spent = rates["cpu_us_per_request_median"]
    print(f"CPU a request, median       : off {spent['off']:.0f} us, on {spent['on']:.0f} us (workers and helpers)")
    print(f"events arrived              : {rates['events_arrived']:,} of {rates['requests_with_ledger']:,} requests")
    per_second = throughput["events_per_second"]
    verdict = "PASS" if per_second >= 5000 else "BELOW"
    print(f"delivery, batches of {args.batch_size:<6} : {per_second:,.0f} events/s  (target >= 5,000/s)  {verdict}")
    print(f"outbox on disk              : {throughput['outbox_bytes_per_event']:,.0f} bytes an event")
    print(f"load average before / after : {load[0]:.2f} / {report['load_after'][0]:.2f}")
    lost = rates["events_arrived"] < rates["requests_with_ledger"] or throughput["events_arrived"] < args.events
    if lost:
        print("FAILED: events went missing", file=sys.stderr)
    for failure in rates["failed"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if lost or rates["failed"] or rates["bad_signatures"] else 0


if __name__ == "__main__":
    sys.exit(main())
