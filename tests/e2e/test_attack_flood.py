"""Attacks by an anonymous client on the edge's resources: memory, by requests whose query strings
are all different and huge; connections, by request heads sent a line a second (slowloris).

One worker, so the serve process is the whole gateway and its RSS (/proc/PID/status VmRSS) is
what the flood costs. Memory is sampled as the flood goes; it must never pass its bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import selectors
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.http import request, split_base
from support.keys import new_key
from support.proc import rss_bytes
from support.processes import Gateway, running_gateway
from support.storage import MIB

FILE = "/random-64k.mp3"
DATA = os.urandom(64 * 1024)


def storage(base: Path) -> Path:
    root = base / "storage"
    root.mkdir(parents=True)
    (root / FILE.lstrip("/")).write_bytes(DATA)
    return root


# -- a pipelining HTTP/1.1 client -----------------------------------------------------------------

REFUSED = "refused"  # a request the server dropped with the connection, unanswered


class _Closing(Exception):
    """The server said `Connection: close` with its last answer."""


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; (status, whether the server closes after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif headers.get("content-length"):
        await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection") == "close"


async def _pipeline(
    host: str, port: int, queue: collections.deque[bytes], tally: collections.Counter, window: int
) -> None:
    """Send what is queued `window` requests at a time on keep-alive connections, reading every answer.

    A server that closes the connection after some answers gets that many at a time from then on
    (so a server answering one request per connection costs one send of each request).
    """
    while queue:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        except OSError:
            queue.popleft()
            tally[REFUSED] += 1
            continue
        batch: collections.deque[bytes] = collections.deque()
        answered = 0
        try:
            while queue or batch:
                if not batch:
                    batch.extend(queue.popleft() for _ in range(min(window, len(queue))))
                    writer.write(b"".join(batch))
                while batch:
                    status, closing = await _answer(reader)
                    tally[status] += 1
                    answered += 1
                    batch.popleft()
                    if closing:
                        raise _Closing
                await writer.drain()
        except _Closing:
            queue.extendleft(reversed(batch))  # not answered yet: sent again on a new connection
            window = max(1, answered)
        except (asyncio.IncompleteReadError, ConnectionError):
            if batch:
                batch.popleft()
                tally[REFUSED] += 1  # the one the server would not answer
                queue.extendleft(reversed(batch))
            window = max(1, answered)
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # the connection's error, raised again on close
                await writer.wait_closed()


def flood(base_url: str, requests: Iterable[bytes], connections: int = 8, window: int = 200) -> collections.Counter:
    """Every request sent and answered (or refused); the statuses counted."""
    host, port = split_base(base_url)
    queue = collections.deque(requests)
    tally: collections.Counter = collections.Counter()

    async def run() -> None:
        await asyncio.wait_for(
            asyncio.gather(*(_pipeline(host, port, queue, tally, window) for _ in range(connections))), 120
        )

    asyncio.run(run())
    return tally


@dataclass
class Flooded:
    """What a flood got, and the worker's memory along the way."""

    baseline: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (requests sent, RSS)
    statuses: collections.Counter = field(default_factory=collections.Counter)

    @property
    def growth(self) -> int:
        return max(rss for _, rss in self.samples) - self.baseline


def flood_watching_memory(
    gateway: Gateway, make: Callable[[int], bytes], total: int, bound: int, warm_up: int = 2000, step: int = 2000
) -> Flooded:
    """`warm_up` requests, then `total` more in steps, sampling the worker's RSS after each step.

    Stops early once the growth passes `bound`: memory a flood has taken is not given back.
    """
    flood(gateway.base_url, (make(n) for n in range(warm_up)))
    result = Flooded(rss_bytes(gateway.pid))
    sent = warm_up
    while sent < warm_up + total:
        count = min(step, warm_up + total - sent)
        result.statuses += flood(gateway.base_url, (make(n) for n in range(sent, sent + count)))
        sent += count
        result.samples.append((sent - warm_up, rss_bytes(gateway.pid)))
        if result.growth > bound:
            break
    return result


GROWTH_BOUND = 8 * MIB
MAX_QUERY = 8192  # longer query strings are 414 before anything is parsed


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A fresh gateway for each flood: what one flood left in memory must not hide the next."""
    with running_gateway(storage(tmp_path), [new_key()], tmp_path / "gateway") as running:
        yield running


def head(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: storage.example.com\r\n\r\n".encode()


def test_a_flood_of_huge_distinct_queries_is_414_and_costs_no_memory(gateway: Gateway) -> None:
    """Query strings of 64 KB (just under what uvicorn's URL parser takes at all), each different:
    all refused with 414 (or another 4xx, or dropped), never 5xx, and the worker's memory stays
    flat. 20,000 requests after the warm-up: more than any per-entry cache holds, and as many as
    uvicorn parses in well under a minute (about 0.75 ms each for 64 KB request lines here)."""
    target = gateway.target(FILE)
    filler = "a" * 64_000
    result = flood_watching_memory(
        gateway, lambda n: head(f"{target}?sig=x&filename={n}{filler}"), total=20_000, bound=GROWTH_BOUND
    )
    assert result.growth <= GROWTH_BOUND, (
        f"RSS grew by {result.growth / MIB:.0f} MiB after {result.samples[-1][0]} requests "
        f"(samples: {[(n, round((rss - result.baseline) / MIB)) for n, rss in result.samples]}; "
        f"statuses {dict(result.statuses)})"
    )
    bad = {status: count for status, count in result.statuses.items() if status != REFUSED and not 400 <= status < 500}
    assert bad == {}, f"answers other than 4xx: {dict(result.statuses)}"
    assert result.statuses[414] + result.statuses[REFUSED] > 0, dict(result.statuses)
    assert request(gateway.base_url, target).body == DATA


def test_a_flood_of_distinct_queries_under_the_limit_costs_no_memory(gateway: Gateway) -> None:
    """100,000 different 4000-byte queries with a made-up signature: each 403, memory flat (no
    cache of parsed queries or signature checks that grows with what anonymous clients send)."""
    target = gateway.target(FILE)

    def make(n: int) -> bytes:
        noise = os.urandom(1000).hex()
        query = f"sig={noise[:1000]}&filename={n}-{noise[1000:]}"
        query += "x" * (4000 - len(query))
        assert len(query) == 4000 < MAX_QUERY
        return head(f"{target}?{query}")

    result = flood_watching_memory(gateway, make, total=100_000, bound=GROWTH_BOUND, step=5000)
    assert result.growth <= GROWTH_BOUND, (
        f"RSS grew by {result.growth / MIB:.0f} MiB after {result.samples[-1][0]} requests "
        f"(samples: {[(n, round((rss - result.baseline) / MIB)) for n, rss in result.samples]})"
    )
    assert dict(result.statuses) == {403: result.samples[-1][0]}
    assert request(gateway.base_url, target).body == DATA


# -- slowloris -------------------------------------------------------------------------------------

TRICKLERS = 300
HEADER_TIMEOUT = 2  # GATEWAY_HEADER_TIMEOUT: seconds a request head may take
CLOSED_WITHIN = 15.0  # seconds from the attack's start by which every trickling connection is closed
DESCRIPTORS = 256  # the gateway's RLIMIT_NOFILE: fewer than the attack's connections


def prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        raise AssertionError(
            "prlimit (util-linux) is needed to cap the gateway's descriptors: apt-get install util-linux"
        )
    return found


class Tricklers:
    """Connections sending a request head one header line a second, never finishing it."""

    def __init__(self, base_url: str, count: int) -> None:
        self.started = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.open: dict[socket.socket, int] = {}
        self.closed_after: list[float] = []  # seconds from the start to the server closing each
        self.answers: collections.Counter[bytes] = collections.Counter()  # first line of what the server said
        for number in range(count):
            sock = socket.create_connection(split_base(base_url), timeout=5)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.open[sock] = number
            try:
                sock.send(b"GET /x HTTP/1.1\r\nHost: storage.example.com\r\n")
            except OSError:  # closed by the server already
                self._closed(sock)

    def _closed(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.open[sock]
        sock.close()
        self.closed_after.append(time.monotonic() - self.started)

    def trickle(self, seconds: float) -> None:
        """One more header line on every open connection, then watch for closes for `seconds`."""
        for sock, number in list(self.open.items()):
            try:
                sock.send(f"X-Trickle-{number}: {time.monotonic():.0f}\r\n".encode())
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # EPIPE, ECONNRESET: the server has closed it
                self._closed(sock)
        deadline = time.monotonic() + seconds
        while self.open and (left := deadline - time.monotonic()) > 0:
            for key, _ in self.selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    self.answers[data.split(b"\r\n", 1)[0]] += 1  # e.g. 408; the close follows
                else:
                    self._closed(sock)

    def close(self) -> None:
        for sock in list(self.open):
            self.selector.unregister(sock)
            sock.close()
        self.selector.close()


def test_slowloris_neither_starves_other_clients_nor_keeps_its_connections(tmp_path: Path) -> None:
    """300 connections trickling a request head, against a gateway allowed 256 descriptors and
    2 s per head: a real client (a new connection each time) still gets the file, every time,
    all along the attack; and the server closes every trickling connection, not long after its
    head's deadline."""
    env = {"GATEWAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
    prefix = [prlimit(), f"--nofile={DESCRIPTORS}:{DESCRIPTORS}", "--"]
    with running_gateway(
        storage(tmp_path), [new_key()], tmp_path / "gateway", extra_env=env, command_prefix=prefix
    ) as gateway:
        target = gateway.target(FILE)
        assert request(gateway.base_url, target).body == DATA
        tricklers = Tricklers(gateway.base_url, TRICKLERS)
        fetched: list[str] = []

        def real_client() -> None:
            for attempt in range(10):
                started = time.monotonic()
                try:
                    reply = request(gateway.base_url, target, timeout=6.0)
                    fetched.append("ok" if (reply.status, reply.body) == (200, DATA) else f"status {reply.status}")
                except OSError as exc:
                    fetched.append(repr(exc))
                time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))

        client = threading.Thread(target=real_client)
        client.start()
        try:
            while tricklers.open and time.monotonic() - tricklers.started < CLOSED_WITHIN + 5:
                tricklers.trickle(1.0)
            client.join(90)
            still_open = len(tricklers.open)
        finally:
            tricklers.close()
    late = sorted(after for after in tricklers.closed_after if after > CLOSED_WITHIN)
    problems = {
        "the real client's attempts": fetched if fetched != ["ok"] * 10 else None,
        f"trickling connections still open after {CLOSED_WITHIN + 5:.0f} s": still_open or None,
        f"trickling connections closed later than {CLOSED_WITHIN:.0f} s (seconds)": late[:5] or None,
        "answers other than 408 on trickling connections": {
            line: count for line, count in tricklers.answers.items() if line.split(b" ")[1:2] != [b"408"]
        }
        or None,
    }
    assert {what: seen for what, seen in problems.items() if seen is not None} == {}
