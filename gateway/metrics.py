"""Prometheus metrics; names and labels are part of the contract."""

from prometheus_client import Counter

REJECTED = Counter(
    "gateway_rejected_total",
    "Edge requests whose token did not resolve to a servable file, by reason.",
    ["reason"],
)
