"""Hostile input that needs the gateway's own process; the rest runs in process (unit/test_edge_hostile.py).

A FIFO in the root must not wedge a worker (a bounded client timeout, then
the process still answers); a request line past 16 KiB meets the gateway's protocol
before any of our code; a symlink to /proc/self/environ would show the
gateway's own environment, which holds its key; and after it all the
process is alive and serving.
"""

from __future__ import annotations

import pytest
from support.http import Reply, request
from support.processes import Gateway
from support.storage import PTREE, SECRET_MARKER, Hostile

NOT_FOUND_BODY = b"Not Found\n"


def assert_clean(reply: Reply, gateway: Gateway) -> None:
    """No 5xx, no secret marker, no key material in any body."""
    assert reply.status < 500, (reply.status, reply.body[:200])
    assert SECRET_MARKER not in reply.body
    for key in gateway.keys:
        assert key.hex().encode() not in reply.body


def assert_plain_404(reply: Reply, gateway: Gateway) -> None:
    assert_clean(reply, gateway)
    assert reply.status == 404
    assert reply.body == NOT_FOUND_BODY
    assert reply.header("ETag") is None and reply.header("Content-Disposition") is None


def fetch(gateway: Gateway, path: str, timeout: float = 10.0) -> Reply:
    return request(gateway.base_url, gateway.target(path), timeout=timeout)


# -- odd files in the root -------------------------------------------------------


def test_fifo_in_the_root_is_404_promptly(gateway: Gateway, hostile: Hostile) -> None:
    # A bounded client timeout: a gateway that blocks opening or reading the FIFO fails here.
    assert_plain_404(fetch(gateway, hostile.fifo, timeout=5.0), gateway)
    assert request(gateway.base_url, "/healthz", timeout=5.0).status == 200


@pytest.mark.parametrize("attribute", ["environ"])  # the others: unit/test_edge_hostile.py
def test_symlink_leading_outside_is_404(gateway: Gateway, hostile: Hostile, attribute: str) -> None:
    assert_plain_404(fetch(gateway, getattr(hostile, attribute)), gateway)


# -- tokens that are not tokens ----------------------------------------------------


@pytest.mark.parametrize("length", [16_400, 60_000, 100_000])
def test_a_request_target_past_16_kib_is_414_before_it_is_read(gateway: Gateway, length: int) -> None:
    """Longer than any token (5,600 characters) and any query the edge reads: refused by the
    gateway's protocol while it arrives, as nginx's large_client_header_buffers do, so it costs no
    memory. It tells nothing about tokens: only the length decides. No 5xx, nothing from the storage."""
    reply = request(gateway.base_url, "/" + "A" * length)
    assert_clean(reply, gateway)
    assert (reply.status, reply.body) == (414, b"")
    assert request(gateway.base_url, "/healthz").status == 200


def test_gateway_alive_after_the_hostile_tests(gateway: Gateway) -> None:
    assert gateway.process.poll() is None
    assert request(gateway.base_url, "/healthz").status == 200
    assert request(gateway.base_url, gateway.target(PTREE)).status == 200
