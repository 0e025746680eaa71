"""Delivery: the outbox POSTed to every webhook URL, signed, in batches, at least once.

Exactly one process of a host delivers: the one holding an exclusive
`flock` on `<ledger dir>/deliverer.lock`. Every edge worker's helper
process (`helper`) runs a `Deliverer` thread that waits for that lock
(trying again every second); the kernel releases it when its holder dies,
however it dies, and another helper takes over from the cursors in the
outbox. `flock` rather than a
POSIX byte-range lock: it belongs to the open file, not to the process, so
nothing else the process opens or closes can drop it.

The lock holder runs one sender thread per URL (a slow or failing receiver
never holds back the others) and a housekeeping loop that closes idle
listening sessions and publishes `gateway_ledger_pending`. A sender takes
the next `batch_size` events after its URL's cursor and POSTs
`{"events": [...]}` with its own HTTP client (http.client: nothing here
runs in an edge worker, nor on an event loop):

- `X-Gateway-Signature: t=<now>,v1=<HMAC>` (signed afresh for each attempt,
  so a receiver's replay window holds for retries too);
- `Idempotency-Key`: derived from the batch's body (which its events' ids
  make unique), so it is the same on every retry of the batch, even after
  a restart;
- every attempt is bounded by `timeout` seconds in all (connecting, sending,
  waiting, reading: past it the socket is shut down), so a receiver that
  hangs costs one attempt, never a stuck sender;
- 2xx: delivered (the cursor moves, events every URL has leave the outbox);
  a network error, a timeout, 408, 429 or a 5xx: retried after an
  exponential backoff with jitter (`retry_seconds` doubling up to
  `max_retry_seconds`; a `Retry-After` is honoured within that cap); any
  other status is a permanent failure: logged, counted, and the batch is
  skipped for that URL (the receiver said it will never take it).

Before a retry the sender checks the batch is still whole in the outbox:
if the bound dropped some of its events meanwhile, it is made again from
what is left (with a new key), so dropped events are not sent after all.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import __version__
from .outbox import Chunks, Committed, Outbox
from .signing import HEADER, signature_header
from .stats import Stats

log = logging.getLogger("gateway.ledger")

LOCK_FILE = "deliverer.lock"
LOCK_POLL_SECONDS = 1.0  # how often a helper that does not deliver tries to take over
POLL_SECONDS = 0.5  # how long a sender that has sent everything waits before looking again
MAX_SWEEP_SECONDS = 1.0  # sessions are closed at most this long after their idle time
MAX_RESPONSE_BYTES = 64 * 1024  # read of a receiver's answer (its first 200 characters are logged)
STOP_SECONDS = 2.0  # a sender busy with a POST at shutdown is left behind after this (it is a daemon)
DELIVERED, RETRY, PERMANENT = "delivered", "retry", "permanent"


@dataclass(frozen=True)
class Delivery:
    """Where and how to deliver (from the `[ledger]` settings)."""

    urls: tuple[str, ...]
    secret: bytes
    batch_size: int
    timeout: float
    retry_seconds: float
    max_retry_seconds: float


@dataclass(frozen=True, slots=True)
class Batch:
    """One delivery: its events (whole chunks of the outbox), its body, and its idempotency key."""

    chunks: Chunks
    body: bytes
    key: str  # from the body, so the same on every retry, after a restart too (ids make every body unique)

    @classmethod
    def of(cls, chunks: Chunks) -> Batch:
        body = chunks.body
        return cls(chunks, body, hashlib.sha256(body).hexdigest()[:32])


@dataclass(frozen=True, slots=True)
class Outcome:
    result: str  # DELIVERED, RETRY or PERMANENT
    reason: str = ""  # the failure's metric label: timeout, connection, server, throttled, rejected
    detail: str = ""
    retry_after: float | None = None


def backoff(attempt: int, first: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): doubling from `first`, capped, with jitter."""
    delay = min(cap, first * 2 ** min(attempt - 1, 60))
    delay = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": never less than half, never in step
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


class Deliverer:
    """The delivery side of the ledger in one process: waits for the host's lock, then delivers."""

    def __init__(
        self, directory: Path, delivery: Delivery, max_events: int, idle_seconds: float, stats: Stats,
        on_committed: Callable[[Committed], None],
    ) -> None:  # fmt: skip
        self.directory = directory
        self.delivery = delivery
        self.max_events = max_events
        self.idle_seconds = idle_seconds
        self.stats = stats
        self.on_committed = on_committed  # what closing sessions recorded (and dropped)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-deliverer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS + 1)

    def _run(self) -> None:
        while not self._stopping.is_set():
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if self._stopping.wait(LOCK_POLL_SECONDS):
                            return
                log.info("ledger: this process (pid %d) delivers to %d webhook URL(s)", os.getpid(),
                         len(self.delivery.urls))  # fmt: skip
                self._deliver()
            except Exception:  # the outbox unreadable for a while, say: let go of the lock, and try again
                log.exception("ledger: the deliverer failed; trying again")
            finally:
                os.close(fd)  # releases the lock
            self._stopping.wait(LOCK_POLL_SECONDS)

    def _deliver(self) -> None:
        outbox = Outbox(self.directory, self.max_events, self.delivery.batch_size)
        senders: list[Sender] = []
        try:
            outbox.forget_cursors(self.delivery.urls)
            senders = [Sender(url, self.delivery, self.directory, self.max_events, self._stopping, self.stats)
                       for url in self.delivery.urls]  # fmt: skip
            for sender in senders:
                sender.start()
            every = min(MAX_SWEEP_SECONDS, max(self.idle_seconds / 4, 0.05))
            while not self._stopping.wait(every):
                try:
                    self.on_committed(outbox.sweep(time.time(), self.idle_seconds))
                    self.stats.pending(outbox.pending())
                except Exception:  # the disk full, say: try again at the next round
                    log.exception("ledger: closing idle sessions failed")
        finally:
            for sender in senders:
                sender.join(STOP_SECONDS)
            self.stats.pending(0)
            outbox.close()


class Sender(threading.Thread):
    """Delivers the outbox to one URL, batch after batch, in order."""

    def __init__(
        self, url: str, delivery: Delivery, directory: Path, max_events: int, stopping: threading.Event, stats: Stats
    ) -> None:
        super().__init__(name=f"ledger-sender-{urlsplit(url).hostname}", daemon=True)
        self.stats = stats
        self.url = url
        self.delivery = delivery
        self.directory = directory
        self.max_events = max_events
        self.stopping = stopping
        self.client = WebhookClient(url, delivery.timeout)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                outbox = None
                try:
                    outbox = Outbox(self.directory, self.max_events, self.delivery.batch_size)
                    self._run(outbox)  # from the cursor in the outbox: nothing acknowledged is sent again
                except Exception:  # a lock held past the busy timeout, a full disk: the next round may do
                    log.exception("ledger: delivering to %s failed; trying again", self.client.shown)
                    self.stopping.wait(LOCK_POLL_SECONDS)
                finally:
                    if outbox is not None:
                        outbox.close()
        finally:
            self.client.stop()

    def _run(self, outbox: Outbox) -> None:
        cursor = outbox.cursor(self.url)
        batch: Batch | None = None
        attempt = 0
        while not self.stopping.is_set():
            if batch is not None and not outbox.whole(batch.chunks):
                batch = None  # the bound dropped some of it meanwhile: send what is left
            if batch is None:
                chunks = outbox.batch(cursor, self.delivery.batch_size)
                if chunks is None:
                    self.stopping.wait(POLL_SECONDS)
                    continue
                batch, attempt = Batch.of(chunks), 0
            outcome = self._attempt(batch)
            if outcome.result == RETRY:
                attempt += 1
                if attempt == 1:
                    log.warning("ledger: delivery to %s failed (%s: %s); retrying with backoff",
                                self.client.shown, outcome.reason, outcome.detail)  # fmt: skip
                delay = backoff(attempt, self.delivery.retry_seconds, self.delivery.max_retry_seconds,
                                outcome.retry_after)  # fmt: skip
                self.stopping.wait(delay)
                continue
            if outcome.result == PERMANENT:
                log.error("ledger: %s refused %d events for good (%s); they are skipped for this URL",
                          self.client.shown, batch.chunks.count, outcome.detail)  # fmt: skip
            else:
                self.stats.add("delivered", batch.chunks.count)
                if attempt:
                    log.info("ledger: delivered to %s again after %d failed attempts", self.client.shown, attempt)
            outbox.acknowledged(self.url, batch.chunks.last, self.delivery.urls)
            cursor, batch = batch.chunks.last, None

    def _attempt(self, batch: Batch) -> Outcome:
        started = time.perf_counter()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": batch.key,
            HEADER: signature_header(self.delivery.secret, batch.body, int(time.time())),
            "User-Agent": f"storage-gateway/{__version__} (ledger)",
        }
        outcome = self.client.post(batch.body, headers)
        self.stats.attempt(time.perf_counter() - started)
        if outcome.result != DELIVERED:
            self.stats.add(f"failed:{outcome.reason}")
        return outcome


class WebhookClient:
    """One keep-alive connection to one webhook URL; each POST bounded by `timeout` seconds in all."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.auth = None
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(user_password.encode()).decode()
        self.shown = f"{parts.scheme}://{self.host}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.timeout = timeout
        self._context = ssl.create_default_context() if self.https else None
        self._connection: http.client.HTTPConnection | None = None
        self._watchdog = Watchdog()

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.https:
                self._connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def stop(self) -> None:
        self.close()
        self._watchdog.stop()

    def post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        if self.auth is not None:
            headers = {**headers, "Authorization": self.auth}
        connection = self._connect()
        self._watchdog.arm(connection, self.timeout)
        try:
            connection.request("POST", self.target, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(MAX_RESPONSE_BYTES)
            if not response.isclosed():
                self.close()  # more answer than we read: this connection cannot be reused
            status = response.status
            retry_after = response.getheader("Retry-After")
        except TimeoutError:
            self.close()
            return Outcome(RETRY, "timeout", f"no answer within {self.timeout:g} s")
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if self._watchdog.fired:
                return Outcome(RETRY, "timeout", f"no complete answer within {self.timeout:g} s")
            return Outcome(RETRY, "connection", f"{type(exc).__name__}: {exc}")
        finally:
            self._watchdog.disarm()
        if response.will_close:
            self.close()
        if 200 <= status < 300:
            return Outcome(DELIVERED)
        detail = f"HTTP {status}: {answer[:200].decode('utf-8', 'replace')!r}"
        if status in (408, 429):
            return Outcome(RETRY, "throttled", detail, _seconds(retry_after))
        if status >= 500:
            return Outcome(RETRY, "server", detail, _seconds(retry_after))
        return Outcome(PERMANENT, "rejected", detail)


class Watchdog(threading.Thread):
    """Ends an attempt that passes its deadline: a receiver trickling its answer byte by byte, each byte inside
    the socket's own timeout, must not hold the sender past `timeout` either. One thread per sender, armed
    for each attempt (a thread started per attempt was a visible share of the sender's time)."""

    def __init__(self) -> None:
        super().__init__(name="ledger-watchdog", daemon=True)
        self._condition = threading.Condition()
        self._armed: tuple[float, http.client.HTTPConnection] | None = None
        self._stopped = False
        self.fired = False

    def arm(self, connection: http.client.HTTPConnection, seconds: float) -> None:
        with self._condition:
            if not self.is_alive():
                self.start()
            self._armed, self.fired = (time.monotonic() + seconds, connection), False
            self._condition.notify()

    def disarm(self) -> None:
        with self._condition:
            self._armed = None

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def run(self) -> None:
        with self._condition:
            while not self._stopped:
                if self._armed is None:
                    self._condition.wait()
                    continue
                deadline, connection = self._armed
                left = deadline - time.monotonic()
                if left > 0:
                    self._condition.wait(left)
                    continue
                self._armed, self.fired = None, True
                sock = connection.sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


def _seconds(value: str | None) -> float | None:
    """A Retry-After given in seconds (a date is ignored: the backoff applies)."""
    return float(value) if value is not None and value.strip().isdigit() else None
