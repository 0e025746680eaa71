#!/usr/bin/env python3
"""Benchmark the storage gateway against nginx serving the same files.

Creates a temporary storage directory (a 64 KiB and a 128 MiB random file),
starts nginx and the gateway on free local ports, checks that both return
the right bytes, then measures with wrk, interleaving the two servers:

  1. requests/s for GET of the 64 KiB file (-c CONNECTIONS),
  2. requests/s for a ranged GET of it (Range: bytes=1000-50999),
  3. single-stream throughput of the 128 MiB file (-c1).

It prints a table with the gateway/nginx ratio against the targets, reports
the gateway workers' peak RSS before and after the large-file run, and writes
everything to bench/results/latest.json. Any wrk error (non-2xx response,
socket error) makes that measurement FAILED, and the exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from Crypto.Cipher import AES

KIB = 1024
MIB = 1024 * KIB
SMALL_NAME, SMALL_SIZE = "small-64k.bin", 64 * KIB
LARGE_NAME, LARGE_SIZE = "large-128m.bin", 128 * MIB
RANGE = ("Range", "bytes=1000-50999")
RANGE_HEADER = f"{RANGE[0]}: {RANGE[1]}"
RANGE_SLICE = slice(1000, 51000)
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "latest.json"
DEFAULT_GATEWAY_CMD = "storage-gateway serve --host {host} --port {port} --workers {workers}"
HOST = "127.0.0.1"
KEY_BYTES = 32  # AES-256
# No proxy: http_proxy in the environment must not reroute local checks.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- data --------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One measurement, run against each server."""

    key: str
    label: str
    file: str
    headers: tuple[str, ...]
    connections: int
    target: float  # minimum gateway/nginx ratio
    unit: str  # "req/s" or "MiB/s"
    timeout: str = "2s"

    def value(self, result: WrkResult) -> float:
        return result.requests_per_sec if self.unit == "req/s" else result.bytes_per_sec / MIB


@dataclass
class WrkResult:
    """What wrk printed, in base units (seconds, bytes)."""

    command: list[str]
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    requests: int = 0
    requests_per_sec: float = 0.0
    bytes_per_sec: float = 0.0
    latency_avg_s: float | None = None
    latency_max_s: float | None = None
    latency_percentiles_s: dict[str, float] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    output: str = ""


@dataclass
class Row:
    """One scenario's results on both servers."""

    scenario: Scenario
    nginx: WrkResult
    gateway: WrkResult

    @property
    def ratio(self) -> float | None:
        if not (self.nginx.ok and self.gateway.ok) or self.scenario.value(self.nginx) <= 0:
            return None
        return self.scenario.value(self.gateway) / self.scenario.value(self.nginx)

    @property
    def verdict(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "FAILED"
        return "PASS" if ratio >= self.scenario.target else "BELOW"


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base_url: str
    paths: dict[str, str]  # file name -> URL path
    probe: str  # URL path that answers 200 once the server is up
    log: Path

    def url(self, name: str) -> str:
        return self.base_url + self.paths[name]


# -- links -------------------------------------------------------------------


def make_token(path: str, key: bytes) -> str:
    """The link token for `path`, made here rather than imported from the gateway.

    The format is fixed by the platform's existing links (README, "Making
    links from other languages"): AES-256-ECB over the UTF-8 path NUL-padded
    to a multiple of 16 bytes, URL-safe base64 without `=`. Made with
    pycryptodome directly, the benches do not depend on where the package
    keeps its codec, and measure any build of the gateway, old or new.
    """
    data = path.encode("utf-8")
    data += b"\0" * (-len(data) % AES.block_size)
    sealed = AES.new(key, AES.MODE_ECB).encrypt(data)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


# -- files -------------------------------------------------------------------


def write_random_file(path: Path, size: int, chunk: int = MIB) -> str:
    """Write `size` random bytes in chunks; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            out.write(data)
            left -= len(data)
    return digest.hexdigest()


def make_storage(root: Path) -> dict[str, str]:
    """The test files; returns name -> sha256 (plus the range slice's)."""
    root.mkdir()
    digests = {
        SMALL_NAME: write_random_file(root / SMALL_NAME, SMALL_SIZE),
        LARGE_NAME: write_random_file(root / LARGE_NAME, LARGE_SIZE),
    }
    small = (root / SMALL_NAME).read_bytes()
    digests["range"] = hashlib.sha256(small[RANGE_SLICE]).hexdigest()
    return digests


# -- processes ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, stdout: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own session (process group), output to `log`.

    With `stdout`, standard output goes to that file instead and `log` gets
    standard error only: the gateway writes its JSON access lines alone on
    stdout, so that is where an operator's access log file is.
    """
    with contextlib.ExitStack() as files:
        errors = files.enter_context(log.open("wb"))
        out = files.enter_context(stdout.open("wb")) if stdout is not None else errors
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=errors, env=env, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the process group, wait, then KILL whatever is left of it."""
    pgid = process.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)  # stragglers (workers, helpers) of the group
    process.wait()


def tail(path: Path, lines: int = 20) -> str:
    """The end of a server's log, for error messages."""
    try:
        text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        text = ""
    return text or "(no output)"


def wait_until_up(server: Server, timeout: float = 30.0) -> None:
    """Poll the server's probe until it answers 200; fail early if the process died."""
    probe = server.probe
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with status {server.process.returncode}:\n{tail(server.log)}")
        try:
            with HTTP.open(server.base_url + probe, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer {probe} within {timeout:.0f}s:\n{tail(server.log)}")


# -- nginx -------------------------------------------------------------------


def nginx_main(prefix: Path) -> str:
    """The main-context lines every bench nginx needs: in the foreground, 2 workers, its files under `prefix`.

    As root, nginx's workers would run as `nobody`, who cannot read the
    benches' temporary directories (mode 0700): they run as root here.
    """
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 2;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
"""


def nginx_temp_paths(prefix: Path, indent: str = "    ") -> str:
    """http-context lines that keep nginx's temporary files under `prefix` (not /var/lib/nginx)."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    return "".join(f"{indent}{kind}_temp_path {prefix / 'temp' / kind};\n" for kind in kinds)


def nginx_config(prefix: Path, storage: Path, port: int) -> str:
    return f"""{nginx_main(prefix)}events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=1000;
    keepalive_requests 100000;
    default_type application/octet-stream;
{nginx_temp_paths(prefix)}    server {{
        listen {HOST}:{port};
        location /files/ {{ alias {storage}/; }}
    }}
}}
"""


def launch_nginx(nginx: str, prefix: Path, config: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Write `config` under `prefix` and start (not wait for) nginx on it; returns the process and its log."""
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config)
    log = prefix / "stdout.log"
    command = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return start(command, log), log


def start_nginx(nginx: str, workdir: Path, storage: Path) -> Server:
    """Start (not wait for) nginx serving `storage` at /files/."""
    prefix = workdir / "nginx"
    port = free_port()
    process, log = launch_nginx(nginx, prefix, nginx_config(prefix, storage, port))
    paths = {name: f"/files/{name}" for name in (SMALL_NAME, LARGE_NAME)}
    return Server("nginx", process, f"http://{HOST}:{port}", paths, paths[SMALL_NAME], log)


# -- gateway -----------------------------------------------------------------


def gateway_env(
    key: bytes, storage: Path | str, access_log: bool = False, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The gateway's environment: this one without any GATEWAY_* variable, plus the bench's settings.

    `storage` is a directory, or a storage URL as is (`file:///dir?accel_redirect=/_recordings/`).
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    url = storage if isinstance(storage, str) else f"file://{storage}"
    env.update(GATEWAY_KEY=key.hex(), GATEWAY_STORAGE=url, GATEWAY_ACCESS_LOG="true" if access_log else "false")
    env.update(extra or {})
    return env


def start_gateway(
    template: str,
    workers: int,
    workdir: Path,
    storage: Path,
    *,
    key: bytes | None = None,
    names: tuple[str, ...] = (SMALL_NAME, LARGE_NAME),
    name: str = "gateway",
    storage_url: str | None = None,
    access_log: bool = False,
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """Start (not wait for) the gateway (a fresh key unless `key`); paths are token URLs of `names`.

    Standard error goes to `<workdir>/<name>.log`; with `access_log`, the
    JSON access lines (standard output) to `<workdir>/<name>.access.log`.
    """
    key = key if key is not None else secrets.token_bytes(KEY_BYTES)
    port = free_port()
    command = shlex.split(template.format(host=HOST, port=port, workers=workers))
    log = workdir / f"{name}.log"
    paths = {file: "/" + make_token(file, key) for file in names}
    env = gateway_env(key, storage_url or storage, access_log, extra_env)
    process = start(command, log, env=env, stdout=workdir / f"{name}.access.log" if access_log else None)
    return Server(name, process, f"http://{HOST}:{port}", paths, "/healthz", log)


# -- /proc: the gateway's workers and their peak RSS --------------------------


def process_table() -> dict[int, int]:
    """pid -> parent pid, from /proc/<pid>/stat (the kernel may lack task/*/children)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name may contain spaces and parentheses: split after the last ')'.
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def descendants(root: int, parents: dict[int, int]) -> Iterator[int]:
    for pid, parent in parents.items():
        if parent == root:
            yield pid
            yield from descendants(pid, parents)


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def server_workers(server: Server) -> list[int]:
    """The worker processes of a server started by this script."""
    port = urlsplit(server.base_url).port
    assert port is not None
    return worker_pids(server.process.pid, port)


def worker_pids(root: int, port: int) -> list[int]:
    """The processes serving requests: those at or below `root` holding the listening socket, no child of
    theirs holding it too.

    uvicorn's supervisor holds the socket as its workers do, so it is not a
    leaf among them; the rendition pools' processes and multiprocessing's
    resource tracker hold none. With one worker, the serve process is the worker.
    """
    parents = process_table()
    inodes = listening_inodes(port)
    holders = [pid for pid in [root, *descendants(root, parents)] if holds_socket(pid, inodes)]
    leaves = [pid for pid in holders if not any(parents.get(other) == pid for other in holders)]
    return sorted(leaves) or [root]


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of one process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def workers_peak_rss(server: Server) -> dict[str, int]:
    """pid (as text, for JSON) -> VmHWM in KiB, for each worker."""
    return {str(pid): peak_rss_kib(pid) for pid in server_workers(server)}


# -- checking the bytes --------------------------------------------------------


def sha256_of(url: str, headers: dict[str, str] | None = None, expect: int = 200) -> str:
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers=headers or {})
    with HTTP.open(request, timeout=60) as response:
        if response.status != expect:
            raise RuntimeError(f"GET {url}: status {response.status}, expected {expect}")
        while chunk := response.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def verify(server: Server, digests: dict[str, str]) -> None:
    """One GET of each file (and the range) must return exactly the right bytes."""
    checks = [
        (SMALL_NAME, {}, 200, digests[SMALL_NAME]),
        (SMALL_NAME, dict([RANGE]), 206, digests["range"]),
        (LARGE_NAME, {}, 200, digests[LARGE_NAME]),
    ]
    for name, headers, status, expected in checks:
        got = sha256_of(server.url(name), headers, status)
        if got != expected:
            what = f"{name} {headers or ''}".strip()
            raise RuntimeError(f"{server.name} returned the wrong bytes for {what}: sha256 {got}")


# -- wrk ---------------------------------------------------------------------

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_UNITS = {"": 1, "K": KIB, "M": MIB, "G": 1024 * MIB, "T": 1024**4, "P": 1024**5}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def _seconds(number: str, unit: str) -> float:
    return round(float(number) * _TIME_UNITS[unit], 9)


def parse_wrk(output: str, result: WrkResult) -> None:
    """Fill `result` from wrk's text report (with --latency)."""
    if m := re.search(r"^\s*Latency\s+" + _TIME + r"\s+\S+\s+" + _TIME, output, re.MULTILINE):
        result.latency_avg_s = _seconds(m[1], m[2])
        result.latency_max_s = _seconds(m[3], m[4])
    for m in re.finditer(r"^\s+(\d+(?:\.\d+)?)%\s+" + _TIME + r"\s*$", output, re.MULTILINE):
        result.latency_percentiles_s[f"p{m[1]}"] = _seconds(m[2], m[3])
    if m := re.search(r"^\s*(\d+) requests in ", output, re.MULTILINE):
        result.requests = int(m[1])
    if m := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE):
        result.requests_per_sec = float(m[1])
    if m := re.search(r"^Transfer/sec:\s+([\d.]+)([KMGTP]?)B", output, re.MULTILINE):
        result.bytes_per_sec = round(float(m[1]) * _BYTE_UNITS[m[2]])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        result.non_2xx_3xx = int(m[1])


def judge(result: WrkResult, returncode: int) -> None:
    """Any error at all makes the measurement a failure."""
    if returncode != 0:
        result.problems.append(f"wrk exited with status {returncode}")
    if "Requests/sec:" not in result.output:
        result.problems.append("no Requests/sec in wrk output")
    elif result.requests == 0:
        result.problems.append("no request completed")
    if result.non_2xx_3xx:
        result.problems.append(f"{result.non_2xx_3xx} non-2xx/3xx responses")
    errors = {kind: n for kind, n in result.socket_errors.items() if n}
    if errors:
        result.problems.append("socket errors: " + ", ".join(f"{kind} {n}" for kind, n in errors.items()))
    result.ok = not result.problems


def run_wrk(wrk: str, url: str, scenario: Scenario, duration: float) -> WrkResult:
    command = [wrk, "-t1", f"-c{scenario.connections}", f"-d{duration:g}s", "--latency", "--timeout", scenario.timeout]
    for header in scenario.headers:
        command += ["-H", header]
    command.append(url)
    result = WrkResult(command)
    timeout = duration + 120
    completed = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    result.output = completed.stdout + completed.stderr
    parse_wrk(result.output, result)
    judge(result, completed.returncode)
    return result


# -- reporting -----------------------------------------------------------------


def format_value(scenario: Scenario, result: WrkResult) -> str:
    if not result.ok:
        return "FAILED"
    digits = 0 if scenario.unit == "req/s" else 1
    return f"{scenario.value(result):,.{digits}f} {scenario.unit}"


def format_latency(result: WrkResult) -> str:
    def ms(value: float | None) -> str:
        return "?" if value is None else f"{value * 1000:.2f}ms"

    return f"avg {ms(result.latency_avg_s)} p50 {ms(result.latency_percentiles_s.get('p50'))} " + (
        f"p99 {ms(result.latency_percentiles_s.get('p99'))} max {ms(result.latency_max_s)}"
    )


def print_table(rows: list[Row]) -> None:
    header = ("metric", "nginx", "gateway", "ratio", "target", "result")
    table = [header] + [
        (
            row.scenario.label,
            format_value(row.scenario, row.nginx),
            format_value(row.scenario, row.gateway),
            "-" if row.ratio is None else f"{row.ratio:.1%}",
            f">= {row.scenario.target:.0%}",
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for number, line in enumerate(table):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:])]
        print("  ".join(cells))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def print_details(rows: list[Row]) -> None:
    print("\nlatency and errors:")
    for row in rows:
        for name, result in (("nginx", row.nginx), ("gateway", row.gateway)):
            status = "ok" if result.ok else "; ".join(result.problems)
            print(f"  {row.scenario.label:<24} {name:<8} {format_latency(result)}  [{status}]")


def print_rss(rss: dict[str, dict[str, int]]) -> None:
    before, after = sum(rss["before_large"].values()), sum(rss["after_large"].values())
    workers = len(rss["after_large"])
    print(
        f"\ngateway peak RSS (VmHWM, sum over {workers} worker{'s' if workers != 1 else ''}): "
        f"{before / KIB:.1f} MiB before the large-file run, {after / KIB:.1f} MiB after "
        f"({(after - before) / KIB:+.1f} MiB for a {LARGE_SIZE // MIB} MiB file)"
    )


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def tool_version(command: list[str]) -> str:
    """First line of `tool -v` (nginx prints it on stderr, wrk exits 1)."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (completed.stdout + completed.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


# -- main ----------------------------------------------------------------------


def scenarios(connections: int) -> list[Scenario]:
    return [
        Scenario("small", "64 KiB GET", SMALL_NAME, (), connections, 0.25, "req/s"),
        Scenario("range", "64 KiB ranged GET", SMALL_NAME, (RANGE_HEADER,), connections, 0.25, "req/s"),
        Scenario("large", "128 MiB single stream", LARGE_NAME, (), 1, 0.60, "MiB/s", timeout="120s"),
    ]


def measure_one(
    args: argparse.Namespace,
    server: Server,
    scenario: Scenario,
    during: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> WrkResult:
    """Warm up, then the measured run; `during()` wraps the measured run alone (e.g. to count CPU time)."""
    url = server.url(scenario.file)
    if args.warmup > 0:
        print(f"  {scenario.label}: {server.name} warm-up {args.warmup:g}s", flush=True)
        run_wrk(args.wrk, url, scenario, args.warmup)
    print(f"  {scenario.label}: {server.name} {args.duration:g}s", flush=True)
    with during():
        return run_wrk(args.wrk, url, scenario, args.duration)


def measure(args: argparse.Namespace, nginx: Server, gateway: Server) -> tuple[list[Row], dict[str, dict[str, int]]]:
    """Every scenario on both servers in turn; the gateway's peak RSS around the large-file run."""
    rows = []
    rss: dict[str, dict[str, int]] = {}
    for scenario in scenarios(args.connections):
        if scenario.key == "large":
            rss["before_large"] = workers_peak_rss(gateway)
        rows.append(Row(scenario, measure_one(args, nginx, scenario), measure_one(args, gateway, scenario)))
    rss["after_large"] = workers_peak_rss(gateway)
    return rows, rss


def report_json(args: argparse.Namespace, rows: list[Row], rss: dict[str, dict[str, int]]) -> dict:
    def result_json(result: WrkResult) -> dict:
        data = asdict(result)
        del data["output"]
        return data

    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "gateway_workers": args.workers,
            "nginx_workers": 2,
            "gateway_cmd": args.gateway_cmd,
            "cpus": os.cpu_count(),
            "nginx": tool_version([args.nginx, "-v"]),
            "wrk": tool_version([args.wrk, "-v"]),
            "python": sys.version.split()[0],
        },
        "metrics": [
            {
                "key": row.scenario.key,
                "label": row.scenario.label,
                "unit": row.scenario.unit,
                "target": row.scenario.target,
                "ratio": row.ratio,
                "verdict": row.verdict,
                "nginx": result_json(row.nginx),
                "gateway": result_json(row.gateway),
            }
            for row in rows
        ],
        "gateway_peak_rss_kib": {
            "before_large": rss["before_large"],
            "after_large": rss["after_large"],
            "sum_before_large": sum(rss["before_large"].values()),
            "sum_after_large": sum(rss["after_large"].values()),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 when every measurement ran cleanly (PASS or BELOW), 1 when one failed.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=10.0, metavar="SECONDS", help="each measured wrk run (default 10)")
    add("--warmup", type=float, default=2.0, metavar="SECONDS", help="warm-up before each run; 0 skips (default 2)")
    add("--connections", type=int, default=32, metavar="N", help="wrk connections for the 64 KiB runs (default 32)")
    add("--workers", type=int, default=2, metavar="N", help="gateway worker processes (default 2; nginx always 2)")
    add(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        metavar="CMD",
        help="command that starts the gateway; {host}, {port} and {workers} are substituted "
        f"(default: {DEFAULT_GATEWAY_CMD!r})",
    )
    add("--nginx", default="/usr/sbin/nginx", help="nginx binary (default /usr/sbin/nginx)")
    add("--wrk", default="/usr/bin/wrk", help="wrk binary (default /usr/bin/wrk)")
    add("--output", type=Path, default=RESULTS_FILE, metavar="FILE", help="JSON results (bench/results/latest.json)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.workers < 1 or args.warmup < 0:
        parser.error("--duration, --connections and --workers must be positive, --warmup not negative")
    for tool in (args.nginx, args.wrk):
        if not shutil.which(tool):
            parser.error(f"{tool} not found")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C works even when started from a script in the background (SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    servers: list[Server] = []
    try:
        storage = workdir / "storage"
        print(f"writing test files under {storage}", flush=True)
        digests = make_storage(storage)
        servers.append(nginx := start_nginx(args.nginx, workdir, storage))
        servers.append(gateway := start_gateway(args.gateway_cmd, args.workers, workdir, storage))
        for server in servers:
            wait_until_up(server)
            verify(server, digests)
            print(f"{server.name} at {server.base_url}: bytes verified", flush=True)
        rows, rss = measure(args, nginx, gateway)
        print()
        print_table(rows)
        print_details(rows)
        print_rss(rss)
        write_json(args.output, report_json(args, rows, rss))
        print(f"\nresults written to {args.output}")
        return 0 if all(row.verdict != "FAILED" for row in rows) else 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, urllib.error.URLError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not leave servers or files behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(servers):
            stop(server.process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
