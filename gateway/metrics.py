"""Prometheus metrics; names and labels are part of the contract."""

from prometheus_client import Counter

REJECTED = Counter(
    "gateway_rejected_total",
    "Edge requests whose token did not resolve to a servable file, by reason.",
    ["reason"],
)
STORAGE_ERRORS = Counter(
    "gateway_storage_errors_total",
    "Storage failures (timeouts, connection errors, S3 5xx, I/O errors), by backend and kind.",
    ["backend", "kind"],
)
