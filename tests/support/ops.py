"""Helpers for the operations tests: scraping metrics, held-open downloads, log lines.

No launcher here: gateways and nginx are started with `support.processes`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from .http import receive_head, split_base
from .polling import poll

K = TypeVar("K")
# The contract's metrics: names and types are part of the product's outside (../shared/CONTRACT.md;
# test_deploy checks this table against CONTRACT.md and the dashboard).
CONTRACT_METRICS = {
    "gateway_requests_total": "counter",
    "gateway_request_duration_seconds": "histogram",
    "gateway_response_bytes_total": "counter",
    "gateway_rejected_total": "counter",
    "gateway_active_streams": "gauge",
    "gateway_storage_errors_total": "counter",
}
# (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, target: str = "/metrics") -> Samples:
    """One scrape, parsed with prometheus-client's own parser (so the text is valid exposition format)."""
    host, port = split_base(base_url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, (response.status, body[:200])
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when it has not appeared yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Values of one sample name keyed by one label (the other labels must not vary)."""
    result: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels)[label]
            assert key not in result, f"{name} varies in more labels than {label}"
            result[key] = value
    return result


def by_labels(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def gauge(samples: Samples, name: str) -> float:
    return samples[(name, ())]


def delta(after: Mapping[K, float], before: Mapping[K, float]) -> dict[K, float]:
    """Increase of each series; series that did not move are left out."""
    moved = {key: value - before.get(key, 0.0) for key, value in after.items()}
    return {key: value for key, value in moved.items() if value != 0}


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$", re.MULTILINE)


def metric_total(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for match in _SAMPLE.finditer(metrics_text):
        if match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2]))
        if all(found.get(label) == value for label, value in labels.items()):
            total += float(match[3])
    return total


# -- a download held open -----------------------------------------------------


@dataclass
class HeldDownload:
    """A GET on a raw socket with a small receive buffer: the server blocks until we read."""

    sock: socket.socket
    status: int
    headers: dict[str, str]
    received: bytearray

    @property
    def length(self) -> int:
        return int(self.headers["content-length"])

    @property
    def client_port(self) -> int:
        return int(self.sock.getsockname()[1])

    def read_some(self, limit: int = 16384) -> int:
        data = self.sock.recv(limit)
        self.received += data
        return len(data)

    def read_to_end(self) -> bytes:
        """Read until the server closes the connection or Content-Length bytes arrived.

        A reset counts as the end (a connection the server aborted); a socket
        timeout fails the test (the server must neither hang nor stall).
        """
        while len(self.received) < self.length:
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            self.received += data
        return bytes(self.received)

    def close(self) -> None:
        self.sock.close()


def hold_download(
    base_url: str,
    target: str,
    timeout: float = 30.0,
    source: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> HeldDownload:
    """Send a GET for a large file and read the headers only; the body waits in the socket buffers."""
    host, port = split_base(base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    lines = [f"GET {target} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = receive_head(sock, 4096)
    return HeldDownload(sock, head.status, head.headers, bytearray(head.rest))


@contextlib.contextmanager
def held_download(base_url: str, target: str, **options: object) -> Iterator[HeldDownload]:
    download = hold_download(base_url, target, **options)  # type: ignore[arg-type]
    try:
        yield download
    finally:
        download.close()


def new_connection(base_url: str, wait: float = 1.0) -> str:
    """What a new client gets right now: "refused", "answered <status line>", "closed" or "no answer".

    A connection the kernel accepts into a listen queue that no process
    serves any more gets "no answer" (after `wait` seconds).
    """
    try:
        sock = socket.create_connection(split_base(base_url), timeout=wait)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            data = sock.recv(4096)
        except TimeoutError:
            return "no answer"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
    return "answered " + data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"


def connect_refused(base_url: str) -> bool:
    """Whether a new TCP connection is refused right now."""
    return new_connection(base_url) == "refused"


# -- logs ------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of `text` parsed as JSON (fails on any line that is not)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for_lines(read: Callable[[], str], count: int, timeout: float = 5.0) -> list[dict[str, object]]:
    """Poll a log reader until it holds `count` JSON lines (written after the response is sent)."""
    return poll(lambda: json_lines(read()), lambda lines: len(lines) >= count, timeout=timeout)
