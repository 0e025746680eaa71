#!/usr/bin/env python3
"""Measure the gateway the way operators run it: access logs on, behind nginx as nginx.conf.example sets it up.

bench.py measures the gateway at its fastest (access log off, nothing in
front). Operators run it with its JSON access log written to a file, next
to an nginx that logs too, either serving the files itself after the
gateway checked the link (offload: X-Accel-Redirect) or passing on the
bytes the gateway streams (proxy mode), and with playable renditions on.
This script measures those set-ups, on one machine, in one run:

  direct     nginx serving the folder itself vs the gateway (2 workers
             each): 64 KiB GET and ranged GET (req/s), 128 MiB single
             stream (MiB/s); and each one's access-log cost (rate with logs
             on / rate with logs off);
  offload    nginx + gateway with X-Accel-Redirect vs nginx direct: 64 KiB
             GET and 128 MiB stream;
  proxy      nginx + gateway streaming the bytes (proxy_buffering off) vs
             nginx direct: 128 MiB stream (64 KiB GET for information);
  idle       RSS and PSS summed over every process of a fresh 2-worker
             gateway's tree (supervisor, workers, resource tracker, PyAV
             pools), each listed with its role;
  slow       200 concurrent slow downloads of an 8 MiB file (load.py's
             clients): (peak summed RSS - idle summed RSS) / 200, gateway
             and nginx;
  firstbyte  first byte of the inline rendition of a 10-minute GSM WAV on a
             fresh gateway (cold), then of the same file again and of a new
             copy under another name (warm).

nginx's http-level settings, its upstream and its site's locations are
taken from nginx.conf.example itself (nginx_example.py), on plain HTTP and
without the per-client rate limits. Every nginx server and every gateway
runs twice, logs on and logs off, side by side; each figure is measured
for every set-up in turn before the next figure (interleaved, so the
host's noise hits all of them alike). Every route must return the exact
bytes (sha256 of a full GET and of a range) before anything is measured.

Two tables are printed, logs on (with the memory and first-byte rows) and
logs off (with the access logs' cost); results go to
bench/results/operators-latest.json, the nginx configuration used to
bench/results/operators-latest.nginx.conf. A wrong byte, a wrk error or a failed
download makes its row FAILED and the exit status 1; a target missed is
BELOW, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import hashlib
import http.client
import operator
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import nginx_example
from bench_transcode import decoded_seconds, fetch, make_recording
from load import BIG_NAME, BIG_SIZE, SLOW_RATE, RssSampler, SlowDownloads

from bench import (
    DEFAULT_GATEWAY_CMD,
    HOST,
    KEY_BYTES,
    KIB,
    LARGE_NAME,
    MIB,
    RANGE_HEADER,
    SMALL_NAME,
    Scenario,
    Server,
    WrkResult,
    _terminate,
    descendants,
    free_port,
    launch_nginx,
    make_storage,
    measure_one,
    nginx_main,
    nginx_temp_paths,
    process_table,
    server_workers,
    start_gateway,
    stop,
    tool_version,
    verify,
    wait_until_up,
    write_json,
    write_random_file,
)

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "operators-latest.json"
SECTIONS = ("direct", "offload", "proxy", "idle", "slow", "firstbyte")
ACCEL_PREFIX = "/_recordings/"  # the example's internal location
CALL_NAME, CALL_COPY_NAME, CALL_SECONDS = "call-gsm.wav", "call-gsm-copy.wav", 600
ROUTE_KINDS = ("nginx", "gateway", "offload", "proxy")  # the order each figure is measured in
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- targets and rows ----------------------------------------------------------------


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """What a row must reach: its ratio (gateway / reference) or its own value, against `bound`."""

    op: Literal[">=", "<=", "<"]
    bound: float
    on_ratio: bool = False

    def met(self, value: float) -> bool:
        return _COMPARISONS[self.op](value, self.bound)

    def text(self, unit: str) -> str:
        if self.on_ratio or unit == "%":
            return f"{self.op} {self.bound:.0%}"
        return f"{self.op} {self.bound:,g} {unit}"


@dataclass
class Row:
    """One line of a table: the gateway's figure, the reference's, and the verdict."""

    section: str
    figure: str
    unit: str  # req/s, MiB/s, MiB, KiB, ms, %
    gateway: float | None
    reference: float | None
    target: Target | None
    problems: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.unit not in ("req/s", "MiB/s") or self.gateway is None or not self.reference:
            return None
        return self.gateway / self.reference

    @property
    def verdict(self) -> str:
        if self.problems or self.gateway is None:
            return "FAILED"
        if self.target is None:
            return "info"
        value = self.ratio if self.target.on_ratio else self.gateway
        return "PASS" if value is not None and self.target.met(value) else "BELOW"


def format_number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.1%}"
    digits = {"req/s": 0, "KiB": 0, "MiB/s": 1, "MiB": 1, "ms": 1}[unit]
    return f"{value:,.{digits}f} {unit}"


LEGEND = (
    "gateway: the gateway alone (direct), nginx in front of it (offload, proxy), or its processes (memory);\n"
    "reference: nginx serving the folder itself; ratio: gateway / reference; "
    "log cost: rate with logs on / rate with logs off"
)


def print_table(title: str, rows: Sequence[Row]) -> None:
    header = ("figure", "gateway", "reference", "ratio", "target", "result")
    lines = [
        (
            row.figure,
            "FAILED" if row.problems else format_number(row.gateway, row.unit),
            format_number(row.reference, row.unit),
            format_number(row.ratio, "%"),
            row.target.text(row.unit) if row.target else "-",
            row.verdict,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def show(line: Sequence[str]) -> str:
        return "  ".join([line[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:]))])

    print(f"\n{title}\n{LEGEND}\n")
    print(show(header))
    print("  ".join("-" * width for width in widths))
    for index, (row, line) in enumerate(zip(rows, lines)):
        if index and row.section != rows[index - 1].section:
            print()
        print(show(line))
    for row in rows:
        for problem in row.problems:
            print(f"  FAILED {row.figure}: {problem}")


# -- processes: trees, memory, CPU -------------------------------------------------------


def tree(root: int) -> list[int]:
    """`root` and every process below it (walked from /proc each time: pools may replace processes)."""
    return [root, *descendants(root, process_table())]


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces): [0] is field 3, state."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def rss_pss_kib(pid: int) -> tuple[int, int]:
    """Resident and proportional set sizes, from /proc/<pid>/smaps_rollup.

    RSS counts shared pages (the interpreter, PyAV's libraries) in every
    process that maps them, so a sum over processes overstates what they
    take together; PSS shares each page out among its users and sums to
    what the tree really costs the host.
    """
    sizes = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            sizes[name] = int(rest.split()[0])
    return sizes["Rss"], sizes["Pss"]


@dataclass
class Proc:
    pid: int
    role: str
    rss_kib: int
    pss_kib: int
    command: str


def gateway_role(pid: int, root: int, workers: set[int], parents: Mapping[int, int]) -> str:
    """What a process of the gateway's tree is, from its place in the tree, its command line and its scheduling.

    Workers hold the listening socket (bench.worker_pids); the conversion
    pool runs at SCHED_IDLE, the probe pool at normal priority.
    """
    if pid in workers:
        return "worker"
    if pid == root:
        return "supervisor"
    if "multiprocessing.resource_tracker" in command_line(pid):
        return "resource tracker"
    if parents.get(pid) in workers:
        idle = int(_stat_fields(pid)[38]) == os.SCHED_IDLE  # field 41, policy
        return "conversion pool" if idle else "probe pool"
    return "other"


def nginx_role(pid: int) -> str:
    command = command_line(pid)
    return command.removeprefix("nginx: ").split(" process")[0] if command.startswith("nginx: ") else "other"


def processes(server: Server, kind: str) -> list[Proc]:
    """Every process of the server's tree, with its role and sizes (processes gone meanwhile are skipped)."""
    root = server.process.pid
    parents = process_table()
    workers = set(server_workers(server)) if kind == "gateway" else set()
    found = []
    for pid in [root, *descendants(root, parents)]:
        try:
            role = gateway_role(pid, root, workers, parents) if kind == "gateway" else nginx_role(pid)
            rss, pss = rss_pss_kib(pid)
            found.append(Proc(pid, role, rss, pss, command_line(pid)))
        except (OSError, KeyError, IndexError):
            continue
    return found


def wait_quiet(servers: Sequence[Server], timeout: float = 30.0, window: float = 0.5, share: float = 0.03) -> float:
    """Until the servers' trees use under `share` of one CPU over `window` (pools importing PyAV, workers
    starting); returns the seconds waited. Measuring while a tree is still starting would charge its
    start-up to the first figure."""
    started = time.monotonic()

    def total() -> float:
        seconds = 0.0
        for server in servers:
            for pid in tree(server.process.pid):
                with contextlib.suppress(OSError):
                    seconds += cpu_seconds(pid)
        return seconds

    while time.monotonic() - started < timeout:
        before = total()
        time.sleep(window)
        if total() - before < share * window:
            break
    return time.monotonic() - started


def host_busy_seconds() -> float:
    """CPU time the host has spent busy (all CPUs), from /proc/stat: all but idle and iowait.

    Interrupt and softirq time counts: with tick-based accounting the task
    a tick interrupts is charged for it too, so the tasks' times (which
    `own_seconds` sums) include the kernel carrying their loopback traffic.
    Steal (the hypervisor's) counts as well: capacity the bench did not get.
    """
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait; guest time is already counted in user
    return (sum(ticks) - idle) / CLOCK_TICKS


def own_seconds() -> float:
    """CPU time of this script's tree: itself, its threads, the servers it started, its children reaped (wrk)."""
    seconds = 0.0
    for pid in tree(os.getpid()):
        with contextlib.suppress(OSError):
            seconds += cpu_seconds(pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def cpu_meter(servers: Mapping[str, Server], into: dict[str, float]) -> Iterator[None]:
    """CPU seconds each server's tree (and each gateway worker, and all the trees: `servers`) used in the block.

    Also wrk's (a child reaped in the block) and `others`: what processes
    outside this bench used meanwhile. On a 2-core host every CPU-second
    someone else takes is missing from the figures; a run with others busy
    is a run to repeat.
    """

    def snapshot() -> dict[str, dict[int, float]]:
        taken: dict[str, dict[int, float]] = {}
        for name, server in servers.items():
            taken[name] = {}
            for pid in tree(server.process.pid):
                with contextlib.suppress(OSError):
                    taken[name][pid] = cpu_seconds(pid)
        return taken

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    host, own = host_busy_seconds(), own_seconds()
    before = snapshot()
    yield
    after = snapshot()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    into["wrk"] = round(reaped.ru_utime + reaped.ru_stime - children.ru_utime - children.ru_stime, 2)
    into["others"] = round(max(0.0, host_busy_seconds() - host - (own_seconds() - own)), 2)
    into["servers"] = 0.0
    for name, server in servers.items():
        used = {pid: seconds - before[name].get(pid, 0.0) for pid, seconds in after[name].items()}
        into[name] = round(sum(used.values()), 2)
        into["servers"] = round(into["servers"] + into[name], 2)
        if name != "nginx":
            for index, pid in enumerate(server_workers(server)):
                into[f"{name} worker {index + 1}"] = round(used.get(pid, 0.0), 2)


# -- the set-ups -----------------------------------------------------------------------


@dataclass
class Route:
    """One way a client reaches the files (a server, or nginx in front of one), logs on or off."""

    kind: str  # nginx (direct), gateway (direct), offload, proxy
    logs: bool
    server: Server  # where the client connects
    trees: dict[str, Server]  # whose CPU time the route costs
    access_logs: list[Path]  # the files its access lines go to
    problem: str | None = None  # wrong bytes: its rows are FAILED, nothing measured

    @property
    def label(self) -> str:
        what = {
            "nginx": "nginx",
            "gateway": "gateway",
            "offload": "nginx+gateway offload",
            "proxy": "nginx+gateway proxy",
        }
        return f"{what[self.kind]}, logs {'on' if self.logs else 'off'}"


@dataclass
class NginxSite:
    """One server block of the bench's nginx."""

    kind: str  # direct, offload, proxy
    logs: bool
    port: int
    upstream: Server | None = None  # the gateway behind it (offload, proxy)

    @property
    def slug(self) -> str:
        return f"{self.kind}-logs-{'on' if self.logs else 'off'}"


def nginx_config(example: nginx_example.Example, prefix: Path, storage: Path, sites: Sequence[NginxSite]) -> str:
    """The bench's nginx: the example's http settings, a direct server and the example's site per gateway."""
    upstreams, servers = [], []
    for site in sites:
        log = (
            f"access_log {prefix / (site.slug + '.access.log')} {example.log_format};"
            if site.logs
            else "access_log off;"
        )
        if site.upstream is None:
            body = f"        location /files/ {{\n            alias {storage}/;\n        }}\n"
        else:
            name = "gateway_" + site.slug.replace("-", "_")
            port = int(site.upstream.base_url.rpartition(":")[2])
            upstreams.append(example.upstream_to(name, HOST, port))
            body = example.site_locations(name, storage)
        servers.append(f"    server {{\n        listen {HOST}:{site.port};\n        {log}\n{body}    }}\n")
    events = "".join(d.render("    ") for d in example.events)
    http = "".join(d.render("    ") for d in example.http)
    return (
        f"# Made by bench/operators.py from nginx.conf.example (see nginx_example.py).\n{nginx_main(prefix)}"
        f"events {{\n{events}}}\nhttp {{\n{nginx_temp_paths(prefix)}{http}{''.join(upstreams)}{''.join(servers)}}}\n"
    )


@dataclass
class Bench:
    """Everything started for one run; stopped in reverse order at the end."""

    args: argparse.Namespace
    workdir: Path
    storage: Path
    key: bytes
    started: list[Server] = field(default_factory=list)

    def gateway(self, name: str, *, logs: bool = True, accel: bool = False) -> Server:
        """Start (not wait for) a 2-worker gateway with the defaults, its own rendition cache, logs on or off."""
        cache = self.workdir / f"{name}.renditions"
        url = f"file://{self.storage}" + (f"?accel_redirect={ACCEL_PREFIX}" if accel else "")
        server = start_gateway(
            self.args.gateway_cmd,
            2,
            self.workdir,
            self.storage,
            key=self.key,
            names=(SMALL_NAME, LARGE_NAME, BIG_NAME, CALL_NAME, CALL_COPY_NAME),
            name=name,
            storage_url=url,
            access_log=logs,
            extra_env={"GATEWAY_TRANSCODE_CACHE_DIR": str(cache)},
        )
        self.started.append(server)
        return server

    def stop(self, server: Server) -> None:
        stop(server.process)
        self.started.remove(server)

    def stop_all(self) -> None:
        for server in reversed(self.started):
            stop(server.process)
        self.started.clear()


# -- firstbyte -------------------------------------------------------------------------------


@dataclass
class FirstByte:
    what: str
    status: int
    headers_ms: float
    first_byte_ms: float | None
    full_body_ms: float
    bytes: int
    problem: str | None = None


def first_bytes(bench: Bench) -> list[FirstByte]:
    """A fresh gateway: the inline rendition cold (nothing asked before), the same again, a new copy.

    The cold request goes out as soon as the gateway answers /healthz: what
    the first listener after a restart waits for, pools still starting
    included. Every body must be the same PCM WAV of the whole call.
    """
    gateway = bench.gateway("gateway-firstbyte")
    wait_until_up(gateway)
    found: list[FirstByte] = []
    expected: str | None = None
    steps = (("cold", CALL_NAME), ("warm, same file", CALL_NAME), ("warm, new copy", CALL_COPY_NAME))
    ms = 1000.0
    for what, name in steps:
        if name == CALL_COPY_NAME:
            shutil.copyfile(bench.storage / CALL_NAME, bench.storage / CALL_COPY_NAME)
        try:
            got = fetch(gateway.base_url, gateway.paths[name] + "?inline=1")
        except (OSError, http.client.HTTPException) as exc:
            found.append(FirstByte(what, 0, 0.0, None, 0.0, 0, f"GET failed: {exc!r}"))
            continue
        first = None if got.first_body_byte is None else got.first_body_byte * ms
        row = FirstByte(what, got.status, got.first_byte * ms, first, got.total * ms, len(got.body))
        digest = hashlib.sha256(got.body).hexdigest()
        if got.status != 200:
            row.problem = f"status {got.status}"
        elif expected is None:
            try:
                seconds = decoded_seconds(got.body)
            except (OSError, ValueError) as exc:  # PyAV's errors for what is not audio
                seconds, row.problem = 0.0, f"the rendition does not decode: {exc}"
            if abs(seconds - CALL_SECONDS) > 0.1:
                row.problem = row.problem or f"not the {CALL_SECONDS} s rendition: {seconds:.2f} s of audio"
            expected = digest
        elif digest != expected:
            row.problem = f"a different rendition (sha256 {digest})"
        found.append(row)
    bench.stop(gateway)
    return found


# -- idle and slow ----------------------------------------------------------------------------


def idle_memory(bench: Bench, gateway: Server) -> tuple[list[Proc], float]:
    """The fresh gateway's processes once it answers, `--settle` seconds have passed and its tree is quiet."""
    wait_until_up(gateway)
    time.sleep(bench.args.settle)
    waited = wait_quiet([gateway])
    return processes(gateway, "gateway"), waited


@dataclass
class Slow:
    server: str
    clients: int
    baseline_kib: int
    peak_kib: int
    per_download_kib: float
    started: int
    completed: int
    failed: int
    verified_mib: float
    problems: list[str]


def slow_memory(bench: Bench, server: Server, expected: bytes) -> Slow:
    """`--slow-clients` paced downloads of the 8 MiB file at once; the tree's summed RSS sampled meanwhile.

    The downloads last about 32 s each, longer than the sampling: every
    client is mid-download (its buffers allocated) while the peak is taken.
    """
    clients = bench.args.slow_clients
    with (
        RssSampler(lambda: tree(server.process.pid), interval=0.2) as sampler,
        SlowDownloads(server, clients, SLOW_RATE, expected) as slow,
    ):
        slow.wait_started(60)
        time.sleep(bench.args.duration)
    stats = slow.stats
    problems = list(stats.problems)
    if stats.started < clients:
        problems.append(f"only {stats.started} of {clients} downloads started")
    if stats.failed:
        problems.append(f"{stats.failed} downloads failed")
    per_download = (sampler.peak_kib - sampler.baseline_kib) / clients
    return Slow(
        server.name, clients, sampler.baseline_kib, sampler.peak_kib, per_download, stats.started,
        stats.completed, stats.failed, stats.verified_bytes / MIB, problems,
    )  # fmt: skip


# -- direct, offload, proxy ----------------------------------------------------------------------


def scenarios(connections: int) -> list[Scenario]:
    """The figures, with the direct comparison's targets (gateway / nginx, logs on)."""
    return [
        Scenario("small", "64 KiB GET", SMALL_NAME, (), connections, 0.50, "req/s"),
        Scenario("range", "64 KiB ranged GET", SMALL_NAME, (RANGE_HEADER,), connections, 0.40, "req/s"),
        Scenario("large", "128 MiB single stream", LARGE_NAME, (), 1, 0.90, "MiB/s", timeout="120s"),
    ]


# Targets of the set-ups in front of the gateway against nginx direct; None: for information.
FRONT_TARGETS: dict[str, dict[str, float | None]] = {
    "offload": {"small": 0.40, "large": 0.95},
    "proxy": {"small": None, "large": 0.50},
}
LOG_COST_TARGET = 0.90  # the gateway's rate with its access log on, against off
OTHERS_WARNING = 0.05  # share of the host's CPU others may take during a run before the report warns


@dataclass
class Run:
    route: str
    scenario: str
    result: WrkResult
    cpu_s: dict[str, float]

    @property
    def cpu_per_request_us(self) -> float | None:
        """The servers' CPU time per request: unlike a rate, hardly moved by what else the host runs."""
        return self.cpu_s["servers"] / self.result.requests * 1e6 if self.result.requests else None


def wanted(kind: str, scenario: Scenario, sections: set[str]) -> bool:
    """Whether `kind` is measured for `scenario`: nginx direct is the reference of every selected section."""
    if kind == "nginx":
        return "direct" in sections or (
            scenario.key in FRONT_TARGETS["offload"] and bool({"offload", "proxy"} & sections)
        )
    if kind == "gateway":
        return "direct" in sections
    return kind in sections and scenario.key in FRONT_TARGETS[kind]


def throughput(bench: Bench, routes: dict[tuple[str, bool], Route]) -> dict[tuple[str, bool, str], Run | str]:
    """Every figure, set-up after set-up (logs on, then off) before the next figure."""
    runs: dict[tuple[str, bool, str], Run | str] = {}
    for scenario in scenarios(bench.args.connections):
        for logs in (True, False):
            for kind in ROUTE_KINDS:
                route = routes.get((kind, logs))
                if route is None or not wanted(kind, scenario, bench.args.sections):
                    continue
                if route.problem is not None:
                    runs[kind, logs, scenario.key] = route.problem
                    continue
                cpu: dict[str, float] = {}
                result = measure_one(bench.args, route.server, scenario, functools.partial(cpu_meter, route.trees, cpu))
                runs[kind, logs, scenario.key] = Run(route.label, scenario.key, result, cpu)
    return runs


def start_routes(bench: Bench) -> tuple[Server, dict[tuple[str, bool], Route], str]:
    """The gateways the selected sections need, then one nginx (2 workers) with a server per route.

    Returns nginx (as its direct server, logs on), the routes and the nginx configuration's text.
    """
    sections = bench.args.sections
    gateways: dict[tuple[str, bool], Server] = {}
    for logs in (True, False):
        state = "on" if logs else "off"
        if {"direct", "proxy"} & sections:
            gateways["plain", logs] = bench.gateway(f"gateway-logs-{state}", logs=logs)
        if "offload" in sections:
            gateways["accel", logs] = bench.gateway(f"gateway-accel-logs-{state}", logs=logs, accel=True)
    sites = [NginxSite("direct", logs, free_port()) for logs in (True, False)]
    for logs in (True, False):
        if "offload" in sections:
            sites.append(NginxSite("offload", logs, free_port(), gateways["accel", logs]))
        if "proxy" in sections:
            sites.append(NginxSite("proxy", logs, free_port(), gateways["plain", logs]))
    prefix = bench.workdir / "nginx"
    config = nginx_config(bench.args.nginx_example, prefix, bench.storage, sites)
    process, log = launch_nginx(bench.args.nginx, prefix, config)
    names = (SMALL_NAME, LARGE_NAME, BIG_NAME)
    files = {name: f"/files/{name}" for name in names}
    nginx = Server("nginx", process, f"http://{HOST}:{sites[0].port}", files, files[SMALL_NAME], log)
    bench.started.append(nginx)

    def gateway_log(gateway: Server, logs: bool) -> list[Path]:
        return [bench.workdir / f"{gateway.name}.access.log"] if logs else []  # bench.start_gateway's stdout

    routes: dict[tuple[str, bool], Route] = {}
    for site in sites:
        access = [prefix / f"{site.slug}.access.log"] if site.logs else []
        name, base = f"nginx ({site.slug})", f"http://{HOST}:{site.port}"
        if site.upstream is None:
            server = Server(name, process, base, files, files[SMALL_NAME], log)
            routes["nginx", site.logs] = Route("nginx", site.logs, server, {"nginx": nginx}, access)
        else:
            gateway = site.upstream
            server = Server(name, process, base, {n: gateway.paths[n] for n in names}, "/healthz", log)
            access += gateway_log(gateway, site.logs)
            trees = {"nginx": nginx, "gateway": gateway}
            routes[site.kind, site.logs] = Route(site.kind, site.logs, server, trees, access)
    if "direct" in sections:
        for logs in (True, False):
            gateway = gateways["plain", logs]
            routes["gateway", logs] = Route("gateway", logs, gateway, {"gateway": gateway}, gateway_log(gateway, logs))
    return nginx, routes, config


def check_logs(routes: Mapping[tuple[str, bool], Route]) -> dict[str, int]:
    """Lines in each access log file; a set-up with logs on must have written some.

    Otherwise the logs-on table would not measure what it says it does.
    """
    lines: dict[str, int] = {}
    for route in routes.values():
        for path in route.access_logs:
            with contextlib.suppress(OSError):
                lines[path.name] = sum(1 for _ in path.open("rb"))
    for route in routes.values():
        if route.logs and route.problem is None:
            for path in route.access_logs:
                if not lines.get(path.name):
                    route.problem = f"its access log {path.name} is empty with logs on"
    return lines


# -- the tables ---------------------------------------------------------------------------------


def value_of(
    runs: Mapping[tuple[str, bool, str], Run | str], kind: str, logs: bool, scenario: Scenario
) -> tuple[float | None, list[str]]:
    """The figure of one measured run, or why there is none."""
    run = runs.get((kind, logs, scenario.key))
    if run is None:
        return None, []
    if isinstance(run, str):
        return None, [run]
    if not run.result.ok:
        return None, [f"{run.route}: {'; '.join(run.result.problems)}"]
    return scenario.value(run.result), []


def throughput_rows(args: argparse.Namespace, runs: Mapping[tuple[str, bool, str], Run | str], logs: bool) -> list[Row]:
    rows = []
    for scenario in scenarios(args.connections):
        reference, reference_problems = value_of(runs, "nginx", logs, scenario)
        if "direct" in args.sections:
            value, problems = value_of(runs, "gateway", logs, scenario)
            target: Target | None = Target(">=", scenario.target, on_ratio=True)
            rows.append(Row("direct", f"direct   {scenario.label}", scenario.unit, value, reference,
                            target, problems + reference_problems))  # fmt: skip
        for kind, targets in FRONT_TARGETS.items():
            if kind not in args.sections or scenario.key not in targets:
                continue
            value, problems = value_of(runs, kind, logs, scenario)
            bound = targets[scenario.key]
            target = None if bound is None else Target(">=", bound, on_ratio=True)
            figure = f"{kind:<8} {scenario.label}"
            rows.append(Row(kind, figure, scenario.unit, value, reference, target, problems + reference_problems))
    return sorted(rows, key=lambda row: SECTIONS.index(row.section))


def log_cost_rows(args: argparse.Namespace, runs: Mapping[tuple[str, bool, str], Run | str]) -> list[Row]:
    """(rate with logs on) / (rate with logs off), per set-up; the gateway's own against nginx's own."""
    rows = []

    def cost(kind: str, scenario: Scenario) -> tuple[float | None, list[str]]:
        on, on_problems = value_of(runs, kind, True, scenario)
        off, off_problems = value_of(runs, kind, False, scenario)
        return (on / off if on is not None and off else None), on_problems + off_problems

    for scenario in scenarios(args.connections):
        reference, reference_problems = cost("nginx", scenario)
        kinds = (["gateway"] if "direct" in args.sections else []) + [
            kind for kind in FRONT_TARGETS if kind in args.sections and scenario.key in FRONT_TARGETS[kind]
        ]
        for kind in kinds:
            value, problems = cost(kind, scenario)
            target = Target(">=", LOG_COST_TARGET) if kind == "gateway" else None
            figure = f"log cost {'direct' if kind == 'gateway' else kind} {scenario.label}"
            rows.append(Row("logs", figure, "%", value, reference, target, problems + reference_problems))
    return rows


def memory_rows(idle: list[Proc] | None, nginx_idle: list[Proc] | None, slow: Mapping[str, Slow]) -> list[Row]:
    rows = []
    if idle is not None:
        nginx_rss = sum(p.rss_kib for p in nginx_idle) / KIB if nginx_idle else None
        nginx_pss = sum(p.pss_kib for p in nginx_idle) / KIB if nginx_idle else None
        rss = sum(p.rss_kib for p in idle) / KIB
        pss = sum(p.pss_kib for p in idle) / KIB
        rows.append(Row("idle", f"idle RSS, {len(idle)} processes summed", "MiB", rss, nginx_rss,
                        Target("<=", 150)))  # fmt: skip
        rows.append(Row("idle", f"idle PSS, {len(idle)} processes summed", "MiB", pss, nginx_pss, None))
    if "gateway" in slow:
        gateway = slow["gateway"]
        nginx = slow.get("nginx")
        problems = gateway.problems + (nginx.problems if nginx else [])
        figure = f"memory per slow download ({gateway.clients} x 8 MiB)"
        rows.append(Row("slow", figure, "KiB", gateway.per_download_kib, nginx.per_download_kib if nginx else None,
                        Target("<=", 256), problems))  # fmt: skip
    return rows


def first_byte_rows(found: list[FirstByte]) -> list[Row]:
    rows = []
    for item in found:
        bound = 1000.0 if item.what == "cold" else 100.0
        problems = [item.problem] if item.problem else []
        figure = f"first rendition byte, {item.what}"
        rows.append(Row("firstbyte", figure, "ms", item.first_byte_ms, None, Target("<", bound), problems))
    return rows


# -- details -------------------------------------------------------------------------------------


def print_processes(title: str, found: list[Proc]) -> None:
    print(f"\n{title}: {len(found)} processes, RSS {sum(p.rss_kib for p in found) / KIB:.1f} MiB, "
          f"PSS {sum(p.pss_kib for p in found) / KIB:.1f} MiB")  # fmt: skip
    for proc in found:
        command = proc.command if len(proc.command) <= 70 else proc.command[:67] + "..."
        print(
            f"  {proc.pid:>7}  {proc.role:<17} RSS {proc.rss_kib / KIB:6.1f} MiB  PSS {proc.pss_kib / KIB:6.1f} MiB  {command}"
        )


def print_runs(runs: Mapping[tuple[str, bool, str], Run | str]) -> None:
    print(
        "\nruns: latency, the servers' CPU time per request, CPU seconds used during the measured run"
        " (others: processes outside the bench)"
    )
    measured = [run for run in runs.values() if isinstance(run, Run)]
    for run in measured:
        result = run.result
        p50 = result.latency_percentiles_s.get("p50")
        p99 = result.latency_percentiles_s.get("p99")
        latency = "p50 ? p99 ?" if p50 is None or p99 is None else f"p50 {p50 * 1000:.2f}ms p99 {p99 * 1000:.2f}ms"
        per_request = "?" if run.cpu_per_request_us is None else f"{run.cpu_per_request_us:,.0f} us/req"
        status = "ok" if result.ok else "; ".join(result.problems)
        cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in run.cpu_s.items() if name != "servers")
        print(
            f"  {run.scenario:<5} {run.route:<34} {result.requests:>8} requests  {latency:<28} {per_request:>14}"
            f"  cpu: {cpu}  [{status}]"
        )


def others_shares(runs: Mapping[tuple[str, bool, str], Run | str], duration: float) -> list[float]:
    """Per measured run, the share of the host's CPU that processes outside the bench took."""
    capacity = duration * (os.cpu_count() or 1)
    return [run.cpu_s.get("others", 0.0) / capacity for run in runs.values() if isinstance(run, Run)]


def print_host(shares: Sequence[float], whole_run: float) -> None:
    print(f"\nother processes took {whole_run:.0%} of the host's CPU over the whole run", end="")
    if shares:
        print(f", {sum(shares) / len(shares):.0%} during the wrk runs (at most {max(shares):.0%} in one)", end="")
    print()
    if whole_run > OTHERS_WARNING or (shares and max(shares) > OTHERS_WARNING):
        print("WARNING: the host was not idle: the figures are lower than it can do; run again on an idle host")


# -- main ----------------------------------------------------------------------------------------


def parse_sections(text: str) -> set[str]:
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(SECTIONS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)} (comma-separated); got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 when every figure was measured cleanly (PASS, BELOW or info), 1 when one FAILED.",
    )
    add = parser.add_argument
    add("--duration", type=float, default=10.0, metavar="SECONDS",
        help="each measured wrk run, and the slow downloads' sampling (default 10)")  # fmt: skip
    add("--warmup", type=float, default=2.0, metavar="SECONDS", help="warm-up before each wrk run; 0 skips (default 2)")
    add("--only", type=parse_sections, action="append", metavar="SECTIONS",
        help=f"run these sections only, comma-separated or repeated: {', '.join(SECTIONS)} (default: all)")  # fmt: skip
    add("--gateway-cmd", default=DEFAULT_GATEWAY_CMD, metavar="CMD",
        help=f"command that starts the gateway; {{host}}, {{port}} and {{workers}} are substituted "
        f"(default: {DEFAULT_GATEWAY_CMD!r})")  # fmt: skip
    add("--connections", type=int, default=32, metavar="N", help="wrk connections for the 64 KiB runs (default 32)")
    add("--slow-clients", type=int, default=200, metavar="N", help="concurrent slow downloads (default 200)")
    add("--settle", type=float, default=3.0, metavar="SECONDS",
        help="wait after the idle gateway first answers, before its memory is read (default 3)")  # fmt: skip
    add("--nginx", default="/usr/sbin/nginx", help="nginx binary (default /usr/sbin/nginx)")
    add("--wrk", default="/usr/bin/wrk", help="wrk binary (default /usr/bin/wrk)")
    add(
        "--example",
        type=Path,
        default=nginx_example.EXAMPLE,
        help="the nginx.conf.example to take nginx's settings from",
    )
    add(
        "--output",
        type=Path,
        default=RESULTS_FILE,
        metavar="FILE",
        help="JSON results (bench/results/operators-latest.json)",
    )
    args = parser.parse_args(argv)
    args.sections = set().union(*args.only) if args.only else set(SECTIONS)
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.slow_clients < 1 or args.settle < 0:
        parser.error(
            "--duration, --connections and --slow-clients must be positive, --warmup and --settle not negative"
        )
    for tool in (args.nginx, args.wrk, "ffmpeg"):
        if not shutil.which(tool):
            parser.error(f"{tool} not found")
    try:
        args.nginx_example = nginx_example.load(args.example)
    except (OSError, nginx_example.ExampleError) as exc:
        parser.error(str(exc))
    return args


def make_files(storage: Path, sections: set[str]) -> dict[str, str]:
    """The files every section reads, in one storage directory; returns the digests bench.verify checks."""
    digests = make_storage(storage)
    write_random_file(storage / BIG_NAME, BIG_SIZE)
    if "firstbyte" in sections:
        make_recording(storage / CALL_NAME, CALL_SECONDS, ["-c:a", "gsm_ms"])
    return digests


@dataclass
class Results:
    """What the sections measured, for the tables, the details and the JSON."""

    firstbyte: list[FirstByte] = field(default_factory=list)
    idle: list[Proc] | None = None  # the fresh gateway's processes (section idle)
    nginx_idle: list[Proc] | None = None
    slow: dict[str, Slow] = field(default_factory=dict)  # "gateway", "nginx"
    runs: dict[tuple[str, bool, str], Run | str] = field(default_factory=dict)  # (kind, logs, scenario)
    access_log_lines: dict[str, int] = field(default_factory=dict)


def run_memory(bench: Bench, results: Results) -> None:
    """Sections idle and slow, on one fresh gateway: its idle memory is the slow downloads' baseline."""
    gateway = bench.gateway("gateway-memory")
    idle, _ = idle_memory(bench, gateway)
    if "idle" in bench.args.sections:
        results.idle = idle
    if "slow" in bench.args.sections:
        print(f"{bench.args.slow_clients} slow downloads from the gateway", flush=True)
        results.slow["gateway"] = slow_memory(bench, gateway, (bench.storage / BIG_NAME).read_bytes())
    bench.stop(gateway)


def run_routes(bench: Bench, digests: dict[str, str], results: Results) -> None:
    """Sections direct, offload and proxy (and nginx's part of idle and slow), every route started at once."""
    args = bench.args
    nginx, routes, config = start_routes(bench)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".nginx.conf").write_text(config)
    for server in bench.started:
        wait_until_up(server)
    waited = wait_quiet(bench.started)
    results.nginx_idle = processes(nginx, "nginx")
    print(f"servers up, quiet after {waited:.1f} s; checking the bytes of every route", flush=True)
    for route in routes.values():
        try:
            verify(route.server, digests)
        except (RuntimeError, OSError, urllib.error.URLError) as exc:
            route.problem = f"{route.label}: {exc}"
            print(f"  {route.problem}", flush=True)
    results.runs = throughput(bench, routes)
    results.access_log_lines = check_logs(routes)
    for (kind, logs), route in routes.items():  # the log check may fail a route measured already
        if route.problem is not None:
            for scenario in scenarios(args.connections):
                if (kind, logs, scenario.key) in results.runs:
                    results.runs[kind, logs, scenario.key] = route.problem
    if "slow" in args.sections:
        print(f"{args.slow_clients} slow downloads from nginx", flush=True)
        expected = (bench.storage / BIG_NAME).read_bytes()
        results.slow["nginx"] = slow_memory(bench, routes["nginx", True].server, expected)


def print_details(results: Results) -> None:
    """What the tables sum up: every run, every process, the downloads, the rendition requests."""
    print_runs(results.runs)
    if results.idle is not None:
        print_processes("idle gateway (2 workers, defaults, renditions on)", results.idle)
    if results.nginx_idle:
        print_processes("idle nginx (2 workers)", results.nginx_idle)
    for name, slow in results.slow.items():
        print(f"\nslow downloads from {name}: {slow.clients} clients, {slow.started} started, {slow.completed} "
              f"completed, {slow.verified_mib:,.0f} MiB byte-exact, {slow.failed} failed; summed RSS "
              f"{slow.baseline_kib / KIB:.1f} MiB before, peak {slow.peak_kib / KIB:.1f} MiB")  # fmt: skip
    for rendition in results.firstbyte:
        first = "-" if rendition.first_byte_ms is None else f"{rendition.first_byte_ms:.1f} ms"
        print(f"\ninline rendition, {rendition.what}: headers {rendition.headers_ms:.1f} ms, first body byte {first}, "
              f"whole body ({rendition.bytes:,} bytes) {rendition.full_body_ms:.0f} ms")  # fmt: skip


def config_json(args: argparse.Namespace) -> dict[str, object]:
    return {
        "sections": sorted(args.sections, key=SECTIONS.index),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "slow_clients": args.slow_clients,
        "gateway_workers": 2,
        "nginx_workers": 2,
        "gateway_cmd": args.gateway_cmd,
        "cpus": os.cpu_count(),
        "nginx": tool_version([args.nginx, "-v"]),
        "wrk": tool_version([args.wrk, "-v"]),
        "python": sys.version.split()[0],
        "nginx_example": str(args.example),
        "nginx_example_left_out": args.nginx_example.dropped,
    }


def results_json(results: Results) -> dict[str, object]:
    return {
        "firstbyte": [asdict(item) for item in results.firstbyte],
        "idle_processes": None if results.idle is None else [asdict(p) for p in results.idle],
        "nginx_processes": None if results.nginx_idle is None else [asdict(p) for p in results.nginx_idle],
        "slow": {name: asdict(value) for name, value in results.slow.items()},
        "access_log_lines": results.access_log_lines,
        "runs": [
            {"route": kind, "logs": logs, "scenario": scenario}
            | (
                {"problem": run}
                if isinstance(run, str)
                else {"cpu_s": run.cpu_s, "cpu_per_request_us": run.cpu_per_request_us, "wrk": wrk_json(run.result)}
            )
            for (kind, logs, scenario), run in results.runs.items()
        ],
    }


def run(args: argparse.Namespace, bench: Bench) -> int:
    """Every selected section, then the tables; 1 when a row FAILED."""
    sections: set[str] = args.sections
    started, host, own = time.monotonic(), host_busy_seconds(), own_seconds()
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"writing test files under {bench.storage}", flush=True)
    digests = make_files(bench.storage, sections)
    results = Results()
    if "firstbyte" in sections:  # first and alone: a cold start is what it measures
        print("first byte of an inline rendition on a fresh gateway", flush=True)
        results.firstbyte = first_bytes(bench)
    if {"idle", "slow"} & sections:
        run_memory(bench, results)
    if {"direct", "offload", "proxy", "idle", "slow"} & sections:
        run_routes(bench, digests, results)

    on_rows = throughput_rows(args, results.runs, logs=True)
    on_rows += memory_rows(results.idle, results.nginx_idle, results.slow) + first_byte_rows(results.firstbyte)
    off_rows = throughput_rows(args, results.runs, logs=False) + log_cost_rows(args, results.runs)
    print_details(results)
    if on_rows:
        print_table("LOGS ON (nginx and gateway access logs written to files; renditions on)", on_rows)
    if off_rows:
        print_table("LOGS OFF (nginx access_log off, GATEWAY_ACCESS_LOG=false), and the access logs' cost", off_rows)
    elapsed = time.monotonic() - started
    whole_run = max(0.0, host_busy_seconds() - host - (own_seconds() - own)) / (elapsed * (os.cpu_count() or 1))
    shares = others_shares(results.runs, args.duration)
    print_host(shares, whole_run)
    report = {
        "time": when,
        "config": config_json(args),
        "host": {
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            "others_share_whole_run": round(whole_run, 3),
            "others_share_per_run": [round(share, 3) for share in shares],
            "elapsed_s": round(elapsed, 1),
        },
        "tables": {"logs_on": [row_json(row) for row in on_rows], "logs_off": [row_json(row) for row in off_rows]},
    } | results_json(results)
    write_json(args.output, report)
    print(f"\nresults written to {args.output}; nginx's configuration to {args.output.with_suffix('.nginx.conf')}")
    return 1 if any(row.verdict == "FAILED" for row in on_rows + off_rows) else 0


def wrk_json(result: WrkResult) -> dict[str, object]:
    data = asdict(result)
    del data["output"]
    return data


def row_json(row: Row) -> dict[str, object]:
    return asdict(row) | {"ratio": row.ratio, "verdict": row.verdict}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-operators-"))
    bench = Bench(args, workdir, workdir / "storage", secrets.token_bytes(KEY_BYTES))
    try:
        return run(args, bench)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, urllib.error.URLError) as exc:
        print(f"operators: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
