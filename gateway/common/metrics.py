"""Prometheus metrics; names and labels are part of the contract.

With several uvicorn workers the numbers must be summed across processes:
the `serve` command points PROMETHEUS_MULTIPROC_DIR at a fresh directory
before this module is first imported (prometheus-client picks its storage
at import), and `exposition()` then merges every worker's files. A worker
that dies without shutting down cleanly would leave its live gauge behind,
so each scrape forgets the gauges of processes that no longer exist.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import re
from functools import cache
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

# prometheus-client's multiprocess directory: set by `serve` for its workers, before this import.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "gateway_requests_total",
    "Edge file requests answered, by method and status (not /metrics or /healthz).",
    ["method", "status"],
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from the request to the last byte of the response, by method.",
    ["method"],
    # Recordings are downloaded whole: the tail is minutes, not milliseconds.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RESPONSE_BYTES = Counter(
    "gateway_response_bytes_total",
    "Body bytes sent by the edge, by the storage backend that held them.",
    ["backend"],
)
REJECTED = Counter(
    "gateway_rejected_total",
    "Edge requests whose link did not resolve to a servable file, by reason.",
    ["reason"],
)
ACTIVE_STREAMS = Gauge(
    "gateway_active_streams",
    # Bodies of one chunk or less go out in a single write and are never
    # "being sent" at a scrape; counting them would only cost time.
    "Edge responses being streamed now (bodies longer than one chunk).",
    multiprocess_mode="livesum",
)
STORAGE_ERRORS = Counter(
    "gateway_storage_errors_total",
    "Storage failures (timeouts, connection errors, S3 5xx, I/O errors), by backend and kind.",
    ["backend", "kind"],
)

ACCESS_LOG_DROPPED = Counter(
    "gateway_access_log_dropped_total",
    "Access log lines dropped because the output did not keep up (the buffer was full).",
)
REVOCATION_ENTRIES = Gauge(
    "gateway_revocation_entries",
    "Entries of the revocation list as last loaded, by kind: link, file, prefix; and lines reported: ignored "
    "(not usable) or ambiguous (both readings revoked).",
    ["kind"],
    multiprocess_mode="livemax",
)

# Renditions (gateway.transcode). `format` is wav, mp3, opus or peaks; `codec`
# is FFmpeg's name for the source's audio (gsm_ms, adpcm_g726, pcm_mulaw, …).
CONVERSIONS = Counter(
    "gateway_conversions_total",
    "Conversions completed, by the source's audio codec and the output format.",
    ["codec", "format"],
)
CONVERSION_DURATION = Histogram(
    "gateway_conversion_duration_seconds",
    "Time to make a rendition (copying the source and converting it), by output format.",
    ["format"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
CONVERSION_FAILURES = Counter(
    "gateway_conversion_failures_total",
    "Rendition requests answered 415, by output format and reason: undecodable (no audio the gateway can decode), "
    "too_long (past the CPU limit), too_large (past the size limit) or crashed (the converter died on it).",
    ["format", "reason"],
)
RENDITION_CACHE = Counter(
    "gateway_rendition_cache_total",
    "Rendition requests by output format and result: hit (already converted) or miss (waited for a conversion).",
    ["format", "result"],
)
CONVERSIONS_REFUSED = Counter(
    "gateway_conversions_refused_total",
    "Rendition requests answered 503 because conversions were at their limit, by output format.",
    ["format"],
)
CONVERSIONS_QUEUED = Gauge(
    "gateway_conversions_queued",
    "Rendition requests waiting for a conversion slot now.",
    multiprocess_mode="livesum",
)
CONVERSION_WAIT = Histogram(
    "gateway_conversion_wait_seconds",
    "Time a rendition request waited for a conversion slot, by output format.",
    ["format"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Views of a recording (gateway.links.views): `view` is player, channel, mask or split; an
# answer for a view of several (a masked channel) counts once for each.
VIEWS = Counter(
    "gateway_views_total",
    "Edge answers for a view of a recording, by view: player (the listening page), channel, mask or split "
    "(peaks per channel).",
    ["view"],
)
ACTIVE_CONVERSIONS = Gauge(
    "gateway_active_conversions",
    "Conversions running now, by output format.",
    ["format"],
    multiprocess_mode="livesum",
)


# The listening ledger (gateway.ledger): events recorded, and their delivery to the webhooks.
LEDGER_EVENTS = Counter(
    "gateway_ledger_events_total",
    "Ledger events recorded (committed to the outbox on disk), by type: access or listen.",
    ["type"],
)
LEDGER_PENDING = Gauge(
    "gateway_ledger_pending",
    "Events in the outbox not yet delivered to every webhook URL (published by the process that delivers).",
    multiprocess_mode="livemax",
)
LEDGER_DELIVERED = Counter(
    "gateway_ledger_delivered_total",
    "Events delivered: acknowledged with a 2xx by a webhook URL (counted once per URL).",
)
LEDGER_FAILURES = Counter(
    "gateway_ledger_failures_total",
    "Failed delivery attempts, by reason: timeout, connection, server (5xx), throttled (408, 429), all retried; "
    "rejected (any other status): the batch is skipped for that URL.",
    ["reason"],
)
LEDGER_DROPPED = Counter(
    "gateway_ledger_dropped_total",
    "Events dropped undelivered: the oldest, past the outbox's bound; or new ones, while a worker's queue is full.",
)
LEDGER_DELIVERY_SECONDS = Histogram(
    "gateway_ledger_delivery_seconds",
    "Time of one delivery attempt (one POST of a batch to one URL), whatever its outcome.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


@cache
def child(metric: Counter | Gauge | Histogram, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: label sets here are few and fixed, lookups many."""
    return metric.labels(*labels)


class RequestTally:
    """The per-request metrics, counted in plain Python and handed to prometheus-client in batches.

    With several workers every increment of a prometheus-client value is a
    write to a shared memory-mapped file under a lock, about five per
    request (requests, duration count and sum, bytes, a refusal): a tenth
    of a worker's time at thousands of requests a second. Counted here and
    added once per turn of the event loop (and at shutdown), each label set
    costs one write for every request that ended in that turn: under load,
    several; a scrape sees a request as soon as its worker's loop turns
    once more, and the totals are exact.
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], int] = {}
        self._bytes: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._durations: dict[str, list[float]] = {}
        self._armed = False

    def request(self, method: str, status: int, seconds: float, backend: str, body_bytes: int) -> None:
        key = (method, str(status))
        self._requests[key] = self._requests.get(key, 0) + 1
        self._durations.setdefault(method, []).append(seconds)
        if body_bytes:
            self._bytes[backend] = self._bytes.get(backend, 0) + body_bytes
        self._arm()

    def rejected(self, reason: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self._arm()

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand what was counted to prometheus-client (idempotent)."""
        self._armed = False
        requests, self._requests = self._requests, {}
        sent, self._bytes = self._bytes, {}
        rejected, self._rejected = self._rejected, {}
        durations, self._durations = self._durations, {}
        for labels, count in requests.items():
            child(REQUESTS, *labels).inc(count)
        for backend, count in sent.items():
            child(RESPONSE_BYTES, backend).inc(count)
        for reason, count in rejected.items():
            child(REJECTED, reason).inc(count)
        for method, values in durations.items():
            _observe_all(child(DURATION, method), values)


def _observe_all(histogram: Any, values: list[float]) -> None:
    """`histogram.observe(v)` for each value, as one write per bucket touched and one for the sum."""
    bounds = getattr(histogram, "_upper_bounds", None)
    if bounds is None or not hasattr(histogram, "_buckets") or not hasattr(histogram, "_sum"):
        for value in values:  # a prometheus-client without these internals: the public way
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value
    histogram._sum.inc(sum(values))
    for index, count in enumerate(counts):
        if count:
            histogram._buckets[index].inc(count)


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(directory: str) -> None:
    """Drop live gauges of processes that are gone (a worker killed by the OOM killer, say)."""
    for name in os.listdir(directory):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match and not _alive(int(match[1])):
            multiprocess.mark_process_dead(int(match[1]), directory)


def worker_exiting() -> None:
    """A clean worker shutdown: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid(), os.environ[MULTIPROC_ENV])


class WorkersRegistry(CollectorRegistry):
    """Every worker's metrics merged at each scrape, without the live gauges of dead ones."""

    def __init__(self, directory: str) -> None:
        super().__init__(auto_describe=False)
        self.directory = directory
        multiprocess.MultiProcessCollector(self, path=directory)

    def collect(self):  # type: ignore[no-untyped-def]
        forget_dead_workers(self.directory)
        yield from super().collect()


def registry() -> CollectorRegistry:
    """What to scrape: all workers in multiprocess mode, else this process."""
    directory = os.environ.get(MULTIPROC_ENV)
    return WorkersRegistry(directory) if directory else REGISTRY


def exposition() -> bytes:
    """The Prometheus text. Blocking (it reads every worker's files): run it in a thread."""
    return generate_latest(registry())


def serve_on_port(host: str, port: int) -> None:
    """/metrics on its own port, from a thread of the supervising process."""
    start_http_server(port, addr=host, registry=registry())
