"""The structured access log of a real `serve`: one JSON line per edge request, on stdout.

Each request is told apart by a unique User-Agent. The gateway runs with
stdout and stderr in separate files, so the tests see where each line goes,
and trusts 127.0.0.1 and 10.0.0.0/8 as proxies: requests sent from
127.0.0.1 come "through a proxy", requests bound to 127.0.0.2 come from an
untrusted peer.
"""

from __future__ import annotations

import http.client
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from support.http import HOST, Reply, split_base
from support.keys import new_key, undecryptable_token
from support.ops import by_labels, held_download, json_lines, scrape
from support.polling import poll
from support.processes import Gateway, running_gateway
from support.storage import MIB, P64K, Storage

TRUSTED = "127.0.0.1, 10.0.0.0/8"
UNTRUSTED_SOURCE = "127.0.0.2"  # any 127/8 address is local on Linux; not in TRUSTED
MARKER = "opslog" + secrets.token_hex(6)  # appears in file names only, never in a request
SECRET_FILE = f"/{MARKER}/звонок {MARKER}.mp3"
SECRET_BIG = f"/{MARKER}/big-{MARKER}.bin"
FIELDS = {"time", "method", "status", "bytes", "duration", "backend", "token", "client"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


@dataclass
class Logged:
    gateway: Gateway

    def stdout(self) -> str:
        return self.gateway.log.read_text(errors="replace")

    def stderr(self) -> str:
        assert self.gateway.stderr_log is not None
        return self.gateway.stderr_log.read_text(errors="replace")

    def lines_for(self, agent: str, count: int = 1) -> list[dict[str, object]]:
        """The access lines of the request(s) sent with User-Agent `agent` (polled: written after the last byte)."""

        def mine() -> list[dict[str, object]]:
            return [line for line in json_lines(self.stdout()) if line.get("user_agent") == agent]

        return poll(mine, lambda found: len(found) >= count)


@pytest.fixture(scope="module")
def secret_files(storage: Storage) -> None:
    storage.add(SECRET_FILE, secrets.token_bytes(5000))
    big = storage.file(SECRET_BIG)
    with big.open("wb") as handle:
        handle.truncate(16 * MIB)


@pytest.fixture(scope="module")
def logged(storage: Storage, secret_files: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    with running_gateway(
        storage.root,
        [new_key()],
        tmp_path_factory.mktemp("access-log"),
        extra_env={"GATEWAY_TRUSTED_PROXIES": TRUSTED},
        split_stderr=True,
    ) as gateway:
        yield Logged(gateway)


def send(
    gateway: Gateway,
    target: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    source: str | None = None,
) -> tuple[str, Reply]:
    """One request with a fresh User-Agent; returns that agent and the reply."""
    agent = "ops-test/" + secrets.token_hex(8)
    host, port = split_base(gateway.base_url)
    conn = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0) if source else None)
    try:
        conn.request(method, target, headers={"User-Agent": agent, **(headers or {})})
        response = conn.getresponse()
        reply = Reply(response.status, response.headers, response.read())
    finally:
        conn.close()
    return agent, reply


def test_one_json_line_per_request_with_the_fields(logged: Logged) -> None:
    gateway = logged.gateway
    file = gateway.target(P64K)
    cases = [
        ("GET", file, {}, 200),
        ("GET", file, {"Range": "bytes=10-109"}, 206),
        ("HEAD", file, {}, 200),
        ("GET", gateway.target("/ops-log/missing.mp3"), {}, 404),
        ("POST", file, {}, 405),
    ]
    for method, target, headers, status in cases:
        agent, reply = send(gateway, target, method, headers)
        assert reply.status == status
        (line,) = logged.lines_for(agent)
        assert FIELDS <= set(line), line
        assert TIME.fullmatch(str(line["time"])), line["time"]
        stamp = datetime.fromisoformat(str(line["time"]))
        assert stamp.utcoffset() == timedelta(0)  # UTC
        assert (line["method"], line["status"]) == (method, status)
        assert line["bytes"] == len(reply.body)
        assert isinstance(line["duration"], float | int) and line["duration"] >= 0
        assert line["token"] == target[1:9]
        assert line["client"] == "127.0.0.1"
        if status in (200, 206):
            assert line["backend"] == "disk"
            assert not line.get("reason")
    # The access lines go to stdout only; stderr has uvicorn's and the gateway's text logs.
    assert "ops-test/" not in logged.stderr()
    assert all(isinstance(line, dict) for line in json_lines(logged.stdout()))


def test_head_refusal_logs_no_body_bytes(logged: Logged) -> None:
    """`bytes` is what went on the wire: a HEAD answer has no body, even a refusal."""
    agent, reply = send(logged.gateway, logged.gateway.target("/ops-log/missing.mp3"), "HEAD")
    assert (reply.status, reply.body) == (404, b"")
    (line,) = logged.lines_for(agent)
    assert (line["method"], line["status"], line["bytes"]) == ("HEAD", 404, 0)


@pytest.mark.parametrize("reason", ["decode", "decrypt", "path", "not_found"])
def test_refusals_log_their_reason(logged: Logged, reason: str) -> None:
    gateway = logged.gateway
    target = {
        "decode": "/" + "B" * 30 + "~",
        "decrypt": "/" + undecryptable_token(gateway.key),
        "path": gateway.target("/../outside/secret"),
        "not_found": gateway.target("/ops-log/missing.mp3"),
    }[reason]
    agent, reply = send(gateway, target)
    assert reply.status == 404
    (line,) = logged.lines_for(agent)
    assert line["reason"] == reason
    assert line["status"] == 404
    assert line["token"] == target[1:9]


def test_no_full_token_and_no_decrypted_path_in_any_output(logged: Logged) -> None:
    gateway = logged.gateway
    targets = [
        gateway.target(SECRET_FILE),
        gateway.target(f"/{MARKER}/missing-{MARKER}.mp3"),
        gateway.target(f"/../{MARKER}/climb.mp3"),
        gateway.target(f"/{MARKER}/bad\x01{MARKER}.mp3"),
    ]
    agents = []
    for target in targets:
        for method, headers in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9,20-29"})):
            agents.append(send(gateway, target, method, headers)[0])
    # A download the client abandons: the gateway logs that it stopped reading.
    with held_download(
        gateway.base_url, gateway.target(SECRET_BIG), extra_headers={"User-Agent": "ops-test/held"}
    ) as held:
        assert held.status == 200
    targets.append(gateway.target(SECRET_BIG))
    agents.append("ops-test/held")
    for agent in agents:
        logged.lines_for(agent)
    everything = logged.stdout() + logged.stderr()
    for target in targets:
        token = target[1:]
        assert token not in everything
        assert token[:8] in everything  # the cut token is there: we read the right logs
    assert MARKER not in everything
    assert "звонок" not in everything


@pytest.mark.parametrize(
    ("source", "forwarded_for", "client"),
    [
        (HOST, None, HOST),
        (HOST, "203.0.113.7", "203.0.113.7"),
        # The rightmost address not of a trusted proxy: anything left of it was written by the client.
        (HOST, "198.51.100.9, 203.0.113.7", "203.0.113.7"),
        (HOST, "198.51.100.9, 10.1.2.3", "198.51.100.9"),
        (HOST, "198.51.100.9,10.1.2.3 , 10.200.0.1", "198.51.100.9"),
        # The peer is no trusted proxy: X-Forwarded-For is its own claim and is ignored.
        (UNTRUSTED_SOURCE, "203.0.113.7", UNTRUSTED_SOURCE),
        (UNTRUSTED_SOURCE, "10.1.2.3", UNTRUSTED_SOURCE),
        (UNTRUSTED_SOURCE, None, UNTRUSTED_SOURCE),
    ],
)
def test_client_address_honours_trusted_proxies_only(
    logged: Logged, source: str, forwarded_for: str | None, client: str
) -> None:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    agent, reply = send(logged.gateway, logged.gateway.target(P64K), "HEAD", headers, source=source)
    assert reply.status == 200
    (line,) = logged.lines_for(agent)
    assert line["client"] == client


def test_hostile_target_stays_one_line(logged: Logged) -> None:
    """A percent-encoded newline and quotes in the target cannot split or forge a log line."""
    before = len(json_lines(logged.stdout()))
    agent, reply = send(logged.gateway, "/%0A%7B%22status%22:200%7D%0D%0Axxxxxxxxxxxxxxxxxxxx")
    assert reply.status == 404
    (line,) = logged.lines_for(agent)
    assert line["status"] == 404 and line["reason"] == "decode"
    assert len(json_lines(logged.stdout())) == before + 1


def test_access_log_can_be_turned_off(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_gateway(
        storage.root,
        [new_key()],
        tmp_path_factory.mktemp("access-log-off"),
        extra_env={"GATEWAY_ACCESS_LOG": "false"},
        split_stderr=True,
    ) as gateway:
        for target in (gateway.target(P64K), gateway.target("/ops-log/missing.mp3")):
            send(gateway, target)
        # The request counter moves in the same step that would write the access line, just before it:
        # once both requests are counted, nothing is pending.
        counted = poll(
            lambda: sum(by_labels(scrape(gateway.base_url), "gateway_requests_total").values()),
            lambda total: total >= 2,
        )
        assert counted == 2
        assert gateway.log.read_text() == ""
