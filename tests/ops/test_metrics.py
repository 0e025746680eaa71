"""Prometheus metrics of a real `serve --workers 2`: the contract's names and labels, summed across workers.

A known mix of requests must move the counters by exactly the mix, the same
on every scrape whichever worker served what; the live gauge of active
streams must come back to 0 when a download ends, and also when the worker
that held one is killed. `--metrics-port` moves /metrics off the public port.
"""

from __future__ import annotations

import http.client
import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.http import HOST, request, split_base
from support.keys import new_key, undecryptable_token
from support.ops import CONTRACT_METRICS, Samples, by_label, by_labels, delta, gauge, held_download, scrape
from support.polling import poll
from support.proc import children, connection_owner
from support.processes import Gateway, free_port, running_gateway, start_gateway, stop_process, wait_exit
from support.recordings import make_audio
from support.storage import MIB, P64K, Storage

BIG = "/ops-metrics/big-32m.bin"
CALL = "/ops-metrics/call-gsm.wav"
CONTRACT_LABELS = {
    "gateway_requests": {"method", "status"},
    "gateway_request_duration_seconds": {"method"},
    "gateway_response_bytes": {"backend"},
    "gateway_rejected": {"reason"},
    "gateway_active_streams": set(),
    "gateway_storage_errors": {"backend", "kind"},
}
# Beyond the contract, only the rendition metrics the README documents (issue #8).
RENDITION_FAMILIES = {
    "gateway_conversions_total": "counter",
    "gateway_conversion_duration_seconds": "histogram",
    "gateway_rendition_cache_total": "counter",
    "gateway_conversions_refused_total": "counter",
    "gateway_conversion_failures_total": "counter",
    "gateway_active_conversions": "gauge",
    "gateway_conversions_queued": "gauge",
    "gateway_conversion_wait_seconds": "histogram",
    # and the revocation list's and the access log's own (README, "Operations"; issues #12, #13)
    "gateway_revocation_entries": "gauge",
    "gateway_access_log_dropped_total": "counter",
    # and the views of a recording (README, "Views of a recording"; issue #15)
    "gateway_views_total": "counter",
    # and the listening ledger's (README, "The listening ledger"; issue #16)
    "gateway_ledger_events_total": "counter",
    "gateway_ledger_pending": "gauge",
    "gateway_ledger_delivered_total": "counter",
    "gateway_ledger_failures_total": "counter",
    "gateway_ledger_dropped_total": "counter",
    "gateway_ledger_delivery_seconds": "histogram",
}
RENDITION_LABELS = {
    "gateway_conversions": {"codec", "format"},
    "gateway_conversion_duration_seconds": {"format"},
    "gateway_rendition_cache": {"format", "result"},
    "gateway_conversions_refused": {"format"},
    "gateway_conversion_failures": {"format", "reason"},
    "gateway_active_conversions": {"format"},
    "gateway_revocation_entries": {"kind"},
    "gateway_conversions_queued": set(),
    "gateway_conversion_wait_seconds": {"format"},
    "gateway_access_log_dropped": set(),
    "gateway_views": {"view"},
    "gateway_ledger_events": {"type"},
    "gateway_ledger_pending": set(),
    "gateway_ledger_delivered": set(),
    "gateway_ledger_failures": {"reason"},
    "gateway_ledger_dropped": set(),
    "gateway_ledger_delivery_seconds": set(),
}


def metrics_dirs(tmpdir: Path) -> list[Path]:
    """The per-run multiprocess directories `serve` made under its TMPDIR."""
    return sorted(tmpdir.glob("storage-gateway-metrics-*"))


@dataclass
class Metered:
    gateway: Gateway
    metrics_url: str  # the --metrics-port listener
    tmpdir: Path  # the gateway's TMPDIR: holds its multiprocess directory

    def scrape(self) -> Samples:
        return scrape(self.metrics_url)

    def workers(self) -> list[int]:
        return children(self.gateway.pid)

    def counting_pids(self) -> set[int]:
        """Workers that have counted something (prometheus-client writes counter_<pid>.db)."""
        (directory,) = metrics_dirs(self.tmpdir)
        return {int(name.stem.rpartition("_")[2]) for name in directory.glob("counter_*.db")}


@pytest.fixture(scope="module")
def big(storage: Storage) -> str:
    """A 32 MiB sparse file: far more than the socket buffers hold, so a held download stays in flight."""
    target = storage.file(BIG)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as handle:
        os.truncate(handle.fileno(), 32 * MIB)
    return BIG


@pytest.fixture(scope="module")
def metered(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    workdir = tmp_path_factory.mktemp("metrics")
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    port = free_port()
    with running_gateway(
        storage.root,
        [new_key()],
        workdir,
        workers=2,
        extra_env={"TMPDIR": str(tmpdir)},
        extra_args=["--metrics-port", str(port)],
    ) as gateway:
        yield Metered(gateway, f"http://{HOST}:{port}", tmpdir)


@dataclass(frozen=True)
class Sent:
    method: str  # the metric label
    status: int
    backend: str  # where the body bytes are counted
    reason: str | None
    bytes: int


def send_mix(gateway: Gateway, storage: Storage) -> list[Sent]:
    """The known mix: served, partial, multipart, HEAD, 304, 416, every kind of refusal, 405, control paths."""
    base = gateway.base_url
    file = gateway.target(P64K)
    info = storage.file(P64K).stat()
    etag = f'"{int(info.st_mtime):x}-{info.st_size:x}"'  # nginx's format, as the gateway sends it
    plan: list[tuple[str, str, dict[str, str], str, str | None]] = [
        *[("GET", file, {}, "disk", None)] * 3,
        *[("GET", file, {"Range": "bytes=0-99"}, "disk", None)] * 2,
        ("GET", file, {"Range": "bytes=0-1,5-9"}, "disk", None),
        *[("HEAD", file, {}, "disk", None)] * 2,
        ("GET", file, {"If-None-Match": etag}, "disk", None),
        ("GET", file, {"Range": "bytes=99999999-"}, "disk", None),
        *[("GET", "/" + "A" * 30 + "!", {}, "none", "decode")] * 2,
        ("GET", "/" + undecryptable_token(gateway.key), {}, "none", "decrypt"),
        ("GET", gateway.target("/../outside/secret"), {}, "none", "path"),
        *[("GET", gateway.target("/ops-metrics/missing.mp3"), {}, "none", "not_found")] * 2,
        ("POST", file, {}, "none", None),
    ]
    sent = []
    for method, target, headers, backend, reason in plan:
        reply = request(base, target, method, headers)
        sent.append(
            Sent(method if method in ("GET", "HEAD") else "OTHER", reply.status, backend, reason, len(reply.body))
        )
    # Not edge file requests: never counted.
    for target in ("/healthz", "/readyz"):
        assert request(base, target).status == 200
    return sent


def expected_requests(sent: list[Sent]) -> dict[tuple[tuple[str, str], ...], float]:
    counts = Counter((("method", s.method), ("status", str(s.status))) for s in sent)
    return {labels: float(n) for labels, n in counts.items()}


def parsed_names(families: dict[str, str]) -> dict[str, str]:
    """prometheus-client's parser names counter families without the _total suffix."""
    return {(name.removesuffix("_total") if kind == "counter" else name): kind for name, kind in families.items()}


def test_series_have_the_contract_names_types_and_labels(metered: Metered, storage: Storage) -> None:
    """Once something was counted, every gateway_ series is a contract one with exactly its labels,
    or one of the documented rendition metrics.

    (In multiprocess mode a labelled family appears with its first sample.)
    """
    gateway = metered.gateway
    make_audio(storage.file(CALL), 2, ["-c:a", "gsm_ms"])
    assert request(gateway.base_url, gateway.target(P64K)).status == 200
    assert request(gateway.base_url, gateway.target("/ops-metrics/missing.mp3")).status == 404
    assert request(gateway.base_url, gateway.target(CALL) + "?format=wav").status == 200
    # A streamed WAV's last byte can be sent before its conversion is counted done (liveness bound).
    poll(
        metered.scrape,
        lambda samples: ("gateway_conversions_total", (("codec", "gsm_ms"), ("format", "wav"))) in samples,
        30.0,
    )
    host, port = split_base(metered.metrics_url)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 200
    assert (response.getheader("Content-Type") or "").startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    ours = {name: family for name, family in families.items() if name.startswith("gateway_")}
    contract, renditions = parsed_names(CONTRACT_METRICS), parsed_names(RENDITION_FAMILIES)
    assert set(ours) <= set(contract) | set(renditions)
    assert set(ours) >= set(contract) - {"gateway_storage_errors"}  # no storage failed yet
    assert {"gateway_conversions", "gateway_conversion_duration_seconds", "gateway_rendition_cache"} <= set(ours)
    labels_of = CONTRACT_LABELS | RENDITION_LABELS
    for name, family in ours.items():
        assert family.type == (contract | renditions)[name], name
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            assert labels == labels_of[name], (sample.name, sample.labels)


def test_known_mix_counts_exactly_on_every_scrape(metered: Metered, storage: Storage) -> None:
    before = metered.scrape()
    sent: list[Sent] = []
    # Repeat the mix until both workers have served part of it, or the sums prove nothing.
    for _ in range(10):
        sent += send_mix(metered.gateway, storage)
        if len(metered.counting_pids() & set(metered.workers())) >= 2:
            break
    assert len(metered.counting_pids() & set(metered.workers())) >= 2, "one worker served everything"
    want_requests = expected_requests(sent)

    # Metrics are recorded once the last byte is sent, which may be just after the client has it.
    def moved() -> dict[tuple[tuple[str, str], ...], float]:
        return delta(by_labels(metered.scrape(), "gateway_requests_total"), by_labels(before, "gateway_requests_total"))

    poll(moved, lambda got: got == want_requests, timeout=10)

    scrapes = [metered.scrape() for _ in range(3)]
    assert scrapes[0] == scrapes[1] == scrapes[2]
    after = scrapes[0]
    assert delta(by_labels(after, "gateway_requests_total"), by_labels(before, "gateway_requests_total")) == (
        want_requests
    )
    reasons = Counter(s.reason for s in sent if s.reason)
    assert delta(
        by_label(after, "gateway_rejected_total", "reason"), by_label(before, "gateway_rejected_total", "reason")
    ) == {reason: float(n) for reason, n in reasons.items()}
    body_bytes: Counter[str] = Counter()
    for s in sent:
        body_bytes[s.backend] += s.bytes
    assert delta(
        by_label(after, "gateway_response_bytes_total", "backend"),
        by_label(before, "gateway_response_bytes_total", "backend"),
    ) == {backend: float(n) for backend, n in body_bytes.items() if n}
    per_method = Counter(s.method for s in sent)
    assert delta(
        by_label(after, "gateway_request_duration_seconds_count", "method"),
        by_label(before, "gateway_request_duration_seconds_count", "method"),
    ) == {method: float(n) for method, n in per_method.items()}
    durations = delta(
        by_label(after, "gateway_request_duration_seconds_sum", "method"),
        by_label(before, "gateway_request_duration_seconds_sum", "method"),
    )
    assert set(durations) == set(per_method) and all(value > 0 for value in durations.values())
    assert gauge(after, "gateway_active_streams") == 0


def test_head_refusals_count_no_body_bytes(metered: Metered) -> None:
    """A HEAD answer has no body on the wire (uvicorn drops it), so it adds nothing to response_bytes_total."""
    gateway = metered.gateway
    before = metered.scrape()
    for _ in range(2):
        reply = request(gateway.base_url, gateway.target("/ops-metrics/missing.mp3"), "HEAD")
        assert (reply.status, reply.body) == (404, b"")
    head_404 = (("method", "HEAD"), ("status", "404"))
    poll(
        lambda: delta(
            by_labels(metered.scrape(), "gateway_requests_total"), by_labels(before, "gateway_requests_total")
        ),
        lambda moved: moved.get(head_404) == 2,
    )
    after = metered.scrape()
    assert delta(by_labels(after, "gateway_requests_total"), by_labels(before, "gateway_requests_total")) == {
        head_404: 2.0
    }
    assert (
        delta(
            by_label(after, "gateway_response_bytes_total", "backend"),
            by_label(before, "gateway_response_bytes_total", "backend"),
        )
        == {}
    )


def test_method_label_is_bounded(metered: Metered) -> None:
    """Other methods must not each create new series (label cardinality is an attack surface)."""
    for method in ("PROPFIND", "PATCH", "DELETE", "OPTIONS", "MKCOL"):
        assert request(metered.gateway.base_url, metered.gateway.target(P64K), method).status == 405
    labels = poll(
        lambda: {dict(k)["method"] for k in by_labels(metered.scrape(), "gateway_requests_total")},
        lambda found: "OTHER" in found,
    )
    assert labels <= {"GET", "HEAD", "OTHER"}


def test_active_streams_counts_a_download_in_flight(metered: Metered, big: str) -> None:
    assert gauge(metered.scrape(), "gateway_active_streams") == 0
    with held_download(metered.gateway.base_url, metered.gateway.target(big)) as download:
        assert download.status == 200
        streams = poll(lambda: gauge(metered.scrape(), "gateway_active_streams"), lambda value: value == 1)
        assert streams == 1
    after = poll(lambda: gauge(metered.scrape(), "gateway_active_streams"), lambda value: value == 0, timeout=10)
    assert after == 0


def test_killed_worker_does_not_leave_active_streams_stuck(metered: Metered, big: str) -> None:
    gateway = metered.gateway
    workers = metered.workers()
    with held_download(gateway.base_url, gateway.target(big)) as download:
        assert poll(lambda: gauge(metered.scrape(), "gateway_active_streams"), lambda v: v == 1) == 1
        owner = connection_owner(workers, split_base(gateway.base_url)[1], download.client_port)
        os.kill(owner, signal.SIGKILL)
        assert len(download.read_to_end()) < download.length  # the worker died mid-body
    # uvicorn replaces the worker; the dead one's live gauge must be forgotten.
    streams = poll(lambda: gauge(metered.scrape(), "gateway_active_streams"), lambda v: v == 0, timeout=20)
    assert streams == 0
    replaced = poll(metered.workers, lambda pids: owner not in pids and len(pids) >= 2, timeout=20)
    assert owner not in replaced
    assert request(gateway.base_url, gateway.target(P64K)).status == 200
    assert gauge(metered.scrape(), "gateway_active_streams") == 0


def test_metrics_port_serves_metrics_and_public_port_answers_plain_404(metered: Metered) -> None:
    public = request(metered.gateway.base_url, "/metrics")
    bad_token = request(metered.gateway.base_url, "/" + "A" * 30 + "!")
    assert public.status == 404
    assert (public.body, public.header("Content-Type")) == (bad_token.body, bad_token.header("Content-Type"))
    assert b"gateway_" not in public.body
    assert "gateway_requests_total" in {name for name, _ in metered.scrape()}


def test_by_default_the_public_port_never_serves_metrics(
    storage: Storage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Its labels tell refusal reasons apart (an existence oracle): only an explicit setting puts it there."""
    workdir = tmp_path_factory.mktemp("metrics-default")
    port = free_port()
    gateway = start_gateway(storage.root, [new_key()], workdir, extra_env={"GATEWAY_PUBLIC_METRICS": ""})
    try:
        public = request(gateway.base_url, "/metrics")
        garbage = request(gateway.base_url, "/" + "A" * 30 + "!")
        assert (public.status, public.body) == (garbage.status, garbage.body) == (404, b"Not Found\n")
    finally:
        stop_process(gateway.process)
    env = {"GATEWAY_PUBLIC_METRICS": "", "GATEWAY_METRICS_PORT": str(port)}  # the setting, not the flag
    gateway = start_gateway(storage.root, [new_key()], workdir, extra_env=env)
    try:
        assert request(gateway.base_url, "/metrics").status == 404
        assert request(gateway.base_url, gateway.target(P64K)).status == 200
        assert "gateway_requests_total" in {name for name, _ in scrape(f"http://127.0.0.1:{port}")}
    finally:
        stop_process(gateway.process)


def test_per_run_directory_is_removed_when_serve_exits(
    storage: Storage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With public metrics, /metrics is on the main port; the multiprocess directory lives as long as serve."""
    workdir = tmp_path_factory.mktemp("metrics-dir")
    tmpdir = workdir / "tmp"
    tmpdir.mkdir()
    gateway = start_gateway(storage.root, [new_key()], workdir, workers=2, extra_env={"TMPDIR": str(tmpdir)})
    try:
        assert request(gateway.base_url, gateway.target(P64K)).status == 200
        assert "gateway_requests_total" in {name for name, _ in scrape(gateway.base_url)}
        (directory,) = metrics_dirs(tmpdir)
        assert any(directory.glob("*.db"))
        os.kill(gateway.pid, signal.SIGTERM)  # the supervisor only, as systemd (KillMode=mixed) and Kubernetes do
        assert wait_exit(gateway.process, 20) == 0
        assert metrics_dirs(tmpdir) == []
    finally:
        stop_process(gateway.process)
