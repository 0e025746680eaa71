"""The public edge: `GET`/`HEAD /<token>` plus health endpoints.

The file route is a plain ASGI callable rather than a Starlette endpoint:
it is the hot path, and at thousands of requests a second a framework
object per request and headers rebuilt each time are a visible share of the
time. Everything that does not need to be fast (health, readiness, lifespan)
is an ordinary Starlette app behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .conditions import if_range_allows, precondition_status
from .config import FileStorage, Settings, load_settings
from .headers import content_disposition, http_date, media_type
from .accesslog import client_address, parse_networks
from .accesslog import write as write_access
from .metrics import (
    ACTIVE_STREAMS,
    DURATION,
    REJECTED,
    REQUESTS,
    RESPONSE_BYTES,
    STORAGE_ERRORS,
    child,
    exposition,
    worker_exiting,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .multipart import multipart_plan, new_boundary
from .ranges import RangeNotSatisfiable, Span, content_range, parse_range
from .resolver import Resolver, Unresolved
from .revocation import Revocations
from .signing import SIGNATURE, LinkRefused, LinkSigner
from .storage import DEFAULT_FAILURE_STATUS, FAILURE_STATUS, Storage, StorageUnavailable, StoredFile
from .storage.disk import DiskStorage

log = logging.getLogger("gateway.edge")
METRICS_PORT_ENV = "GATEWAY_METRICS_PORT"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_CONDITIONAL = (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
_TRUE = {"1", "true", "yes", "on"}


def _plain(status: int, text: str, *extra: tuple[bytes, bytes]) -> tuple[Message, Message]:
    """A small fixed text answer, built once at import."""
    body = f"{text}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        _NOSNIFF,
        *extra,
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


NOT_FOUND = _plain(404, "Not Found")
METHOD_NOT_ALLOWED = _plain(405, "Method Not Allowed", (b"allow", b"GET, HEAD"))
PRECONDITION_FAILED = _plain(412, "Precondition Failed")
STORAGE_FAILURES = {
    502: _plain(502, "Bad Gateway"),
    503: _plain(503, "Service Unavailable", (b"retry-after", b"5")),
    504: _plain(504, "Gateway Timeout"),
}


def _storage_failure(exc: StorageUnavailable) -> tuple[Message, Message]:
    return STORAGE_FAILURES[FAILURE_STATUS.get(exc.kind, DEFAULT_FAILURE_STATUS)]


class Exchange:
    """What one edge request did, for its metrics and its access-log line."""

    __slots__ = ("method", "status", "bytes", "backend", "reason", "detail", "started")

    def __init__(self, method: str) -> None:
        self.method = method
        self.status = 500  # what uvicorn answers if we fail before starting a response
        self.bytes = 0
        self.backend = "none"
        self.reason = ""
        self.detail = ""
        self.started = time.perf_counter()


def metrics_endpoint(request: Request) -> Response:
    """Prometheus scrape; a plain function, so Starlette runs the file reads in a thread."""
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)


@dataclass(frozen=True, slots=True)
class Representation:
    """What the edge says about one version of one file, built once per version."""

    content_type: str
    etag: str
    mtime: int
    headers: Headers  # sent with every 200/206
    validators: Headers  # sent with 304


def _query_params(query: bytes) -> dict[str, str]:
    """The query string as a dict (last value wins); most links have none."""
    if not query:
        return {}
    return dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))


class Edge:
    """ASGI entry: the token route, with the control app behind it."""

    def __init__(self, settings: Settings, storages: Sequence[Storage], serve_metrics: bool = True) -> None:
        self.settings = settings
        self.storages = tuple(storages)
        self.resolver = Resolver(settings.keys, self.storages)
        self.signer = LinkSigner(settings.keys)
        self.revocations = Revocations(settings.revocation_file)
        self.representation = lru_cache(maxsize=4096)(self._representation)
        self.trusted_proxies = parse_networks(settings.trusted_proxies)
        self.draining = False
        routes = [Route("/healthz", self.healthz), Route("/readyz", self.readyz)]
        if serve_metrics:
            routes.append(Route("/metrics", metrics_endpoint))
        self.control = Starlette(routes=routes, lifespan=self._lifespan)
        self._control_paths = {route.path for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._control_paths:
            await self.serve_measured(scope, receive, send)
        else:
            await self.control(scope, receive, send)

    # -- control endpoints -------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for storage in self.storages:
                await storage.start()
                stack.push_async_callback(storage.aclose)
            await self.revocations.load()
            watcher = asyncio.create_task(self.revocations.watch())
            stack.callback(watcher.cancel)
            stack.callback(worker_exiting)
            self._notice_draining()
            yield

    def _notice_draining(self) -> None:
        """Turn /readyz to 503 the moment SIGTERM arrives, then let uvicorn drain.

        uvicorn owns the signal handlers (it stops accepting and waits up to
        the drain time for running downloads); we chain in front of its
        handler rather than replace it.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def chained(sig: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
                if not self.draining:
                    self.draining = True
                    log.info("draining: readiness is now 503; running downloads may finish")
                previous(sig, frame)

            signal.signal(signum, chained)

    async def healthz(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n", headers={"cache-control": "no-store"})

    async def readyz(self, request: Request) -> PlainTextResponse:
        """Each storage's state; 503 only for what taking this replica out of service can help.

        A local directory that is unreadable is this replica's problem (a lost
        mount): 503. A remote store that is down is every replica's problem:
        failing them all would leave the Service with no endpoints even for
        files on disk, so it is reported but does not fail readiness, unless
        no storage at all is reachable. Draining is always 503.
        """
        states = [(storage, await storage.ready()) for storage in self.storages]
        body = "".join(f"{storage.label}: {'ok' if ok else 'unavailable'}\n" for storage, ok in states)
        ready = (
            not self.draining
            and any(ok for _, ok in states)
            and all(ok for storage, ok in states if storage.local)
        )
        if self.draining:
            body += "draining\n"
        return PlainTextResponse(body, status_code=200 if ready else 503, headers={"cache-control": "no-store"})

    # -- the file route ----------------------------------------------------

    def _representation(self, path: str, name: str, etag: str, mtime: int, inline: bool) -> Representation:
        """Headers for one version of a file as one link presents it (`name`, `inline`)."""
        content_type = media_type(path)
        validators = [
            (b"etag", etag.encode()),
            (b"last-modified", http_date(mtime).encode()),
            (b"cache-control", self.settings.cache_control.encode()),
        ]
        headers = [
            (b"content-type", content_type.encode()),
            (b"accept-ranges", b"bytes"),
            *validators,
            (b"content-disposition", content_disposition(name, inline).encode()),
            _NOSNIFF,
        ]
        return Representation(content_type, etag, mtime, headers, validators)

    async def serve_measured(self, scope: Scope, receive: Receive, send: Send) -> None:
        """serve(), counted for the metrics and written to the access log."""
        exchange = Exchange(scope["method"] if scope["method"] in ("GET", "HEAD") else "OTHER")
        head = scope["method"] == "HEAD"  # uvicorn sends no body for HEAD, whatever we pass it

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
            elif not head:
                exchange.bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.serve(scope, receive, measured_send, exchange)
        finally:
            duration = time.perf_counter() - exchange.started
            child(REQUESTS, exchange.method, str(exchange.status)).inc()
            child(DURATION, exchange.method).observe(duration)
            if exchange.bytes:
                child(RESPONSE_BYTES, exchange.backend).inc(exchange.bytes)
            if self.settings.access_log:
                self._log_access(scope, exchange, duration)

    def _log_access(self, scope: Scope, exchange: Exchange, duration: float) -> None:
        headers = dict(scope["headers"])
        client = scope.get("client")
        fields: dict[str, object] = {
            "method": scope["method"],
            "status": exchange.status,
            "bytes": exchange.bytes,
            "duration": round(duration, 6),
            "backend": exchange.backend,
            "token": scope["path"][1:9],
            "client": client_address(client and client[0], headers.get(b"x-forwarded-for"), self.trusted_proxies),
        }
        if exchange.reason:
            fields["reason"] = exchange.reason
            fields["detail"] = exchange.detail
        if b"range" in headers:
            fields["range"] = headers[b"range"].decode("latin-1")[:100]
        if b"user-agent" in headers:
            fields["user_agent"] = headers[b"user-agent"].decode("latin-1")[:200]
        write_access(fields)

    async def serve(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange) -> None:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            await _send_pair(send, METHOD_NOT_ALLOWED)
            return
        token = scope["path"][1:]
        params = _query_params(scope["query_string"])
        signed = SIGNATURE in params
        if signed or self.settings.require_signed:
            try:
                if not signed:
                    raise LinkRefused(403, "unsigned", "unsigned links are refused (require_signed)")
                self.signer.verify(token, params)
            except LinkRefused as exc:
                await _reject(send, exchange, token, exc.reason, str(exc), exc.status)
                return
        try:
            file, path, storage = await self.resolver.open(token)
        except Unresolved as exc:
            await _reject(send, exchange, token, exc.reason, str(exc), 404)
            return
        except StorageUnavailable as exc:
            exchange.reason, exchange.detail = "storage", exc.kind
            await _send_pair(send, _storage_failure(exc))
            return
        exchange.backend = storage.label
        try:
            if self.revocations.revoked(token, path):
                await _reject(send, exchange, token, "revoked", "link or file revoked", 410)
                return
            inline = params.get("inline", "").lower() in _TRUE
            # Only a signed link may rename the download: the name is part of what was signed.
            name = (signed and params.get("filename", "").rpartition("/")[2]) or path.rpartition("/")[2]
            if storage.handoff is not None:
                await self._handoff(send, storage, path, name, inline)
            else:
                await self._respond(
                    scope, receive, send, file, self.representation(path, name, file.etag, file.mtime, inline)
                )
        except StorageUnavailable as exc:
            log.error("storage %s failed while streaming token=%s kind=%s: %s", storage.label, token[:8], exc.kind, exc)
            child(STORAGE_ERRORS, storage.label, exc.kind).inc()
            exchange.reason, exchange.detail = "storage", exc.kind
        finally:
            await file.close()

    async def _handoff(self, send: Send, storage: Storage, path: str, name: str, inline: bool) -> None:
        """Let another server send the bytes, with the name and type we decided.

        S3 gets a 302 to a presigned URL that makes it answer with our
        Content-Type and Content-Disposition. nginx gets X-Accel-Redirect to
        an internal location, plus the headers it passes on from us; it then
        serves the file with sendfile, ranges and validators included.
        """
        content_type = media_type(path)
        disposition = content_disposition(name, inline)
        url = await storage.handoff_url(path, content_type, disposition)
        if storage.handoff == "redirect":
            status = 302
            headers = [(b"location", url.encode("latin-1")), (b"cache-control", b"no-store")]
        else:
            status = 200
            headers = [
                (b"x-accel-redirect", url.encode("latin-1")),
                (b"content-type", content_type.encode()),
                (b"content-disposition", disposition.encode()),
                (b"cache-control", self.settings.cache_control.encode()),
            ]
        headers += [(b"content-length", b"0"), _NOSNIFF]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _respond(self, scope: Scope, receive: Receive, send: Send, file: StoredFile, rep: Representation) -> None:
        method = scope["method"]
        request_headers = dict(scope["headers"])

        if any(name in request_headers for name in _CONDITIONAL):
            status = precondition_status(
                method,
                rep.etag,
                rep.mtime,
                **{
                    name.decode().replace("-", "_"): request_headers[name].decode("latin-1")
                    for name in _CONDITIONAL
                    if name in request_headers
                },
            )
            if status == 304:
                await send({"type": "http.response.start", "status": 304, "headers": rep.validators})
                await send({"type": "http.response.body", "body": b""})
                return
            if status == 412:
                await _send_pair(send, PRECONDITION_FAILED)
                return

        spans: tuple[Span, ...] | None = None
        range_header = request_headers.get(b"range")
        if range_header is not None and method == "GET":
            if_range = request_headers.get(b"if-range")
            if if_range_allows(None if if_range is None else if_range.decode("latin-1"), rep.etag, rep.mtime):
                try:
                    spans = parse_range(range_header.decode("latin-1"), file.size, self.settings.max_ranges)
                except RangeNotSatisfiable:
                    await _send_pair(
                        send, _plain(416, "Range Not Satisfiable", (b"content-range", f"bytes */{file.size}".encode()))
                    )
                    return

        if spans is None:
            status, length, pieces = 200, file.size, _file_pieces(file, ((0, file.size),))
            headers = [*rep.headers, (b"content-length", str(length).encode())]
        elif len(spans) == 1:
            status, length, pieces = 206, spans[0][1] - spans[0][0], _file_pieces(file, spans)
            headers = [
                *rep.headers,
                (b"content-length", str(length).encode()),
                (b"content-range", content_range(spans[0], file.size).encode()),
            ]
        else:
            boundary = new_boundary()
            length, parts, closing = multipart_plan(spans, file.size, rep.content_type, boundary)
            status, pieces = 206, _multipart_pieces(file, parts, closing)
            headers = [
                (b"content-type", f"multipart/byteranges; boundary={boundary}".encode()),
                *rep.headers[1:],
                (b"content-length", str(length).encode()),
            ]
        start = {"type": "http.response.start", "status": status, "headers": headers}
        if method == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(start, pieces, length, receive, send)

    async def _stream(
        self, start: Message, pieces: AsyncIterator[bytes], length: int, receive: Receive, send: Send
    ) -> None:
        """Send the body with backpressure; stop reading when the client leaves.

        Headers go out with the first chunk, so a storage that fails before
        any byte is read still gets a clean 5xx. One chunk is held back so
        the last goes out with `more_body: False` (a small file is a single
        send). After the headers, a failure aborts the connection: the
        client sees a short transfer against Content-Length and can resume,
        rather than a 200 whose body is silently cut.
        """
        streaming = length > self.settings.chunk_size
        gone = asyncio.ensure_future(_disconnected(receive)) if streaming else None
        held: bytes | None = None
        if streaming:
            ACTIVE_STREAMS.inc()
        try:
            async with contextlib.aclosing(pieces):
                async for data in pieces:
                    if held is None:
                        held = data
                        continue
                    if start:
                        await send(start)
                        start = {}
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                    held = data
                    if gone is not None and gone.done():
                        log.info("client went away mid-body; stopped reading")
                        return
        except StorageUnavailable as exc:
            if not start:
                raise  # headers are out: abort the connection (uvicorn closes it)
            await _send_pair(send, _storage_failure(exc))
            raise
        finally:
            if gone is not None:
                gone.cancel()
                ACTIVE_STREAMS.dec()
        if start:
            await send(start)
        await send({"type": "http.response.body", "body": held or b""})


_REFUSALS = {404: NOT_FOUND, 403: _plain(403, "Forbidden"), 410: _plain(410, "Gone")}


async def _reject(send: Send, exchange: Exchange, token: str, reason: str, detail: str, status: int) -> None:
    """Refuse a link: the reason goes to the log (token cut to 8) and the metric, never to the client."""
    child(REJECTED, reason).inc()
    exchange.reason, exchange.detail = reason, detail
    await _send_pair(send, _REFUSALS[status])


async def _send_pair(send: Send, pair: tuple[Message, Message]) -> None:
    await send(pair[0])
    await send(pair[1])


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (or the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _file_pieces(file: StoredFile, spans: tuple[Span, ...]) -> AsyncIterator[bytes]:
    for start, stop in spans:
        async with contextlib.aclosing(file.iter_bytes(start, stop)) as chunks:
            async for data in chunks:
                yield data


async def _multipart_pieces(file: StoredFile, parts: list[tuple[bytes, Span]], closing: bytes) -> AsyncIterator[bytes]:
    for head, (start, stop) in parts:
        yield head
        async with contextlib.aclosing(file.iter_bytes(start, stop)) as chunks:
            async for data in chunks:
                yield data
    yield closing


def build_storages(settings: Settings) -> list[Storage]:
    """One backend per configured storage URL, in fallback order."""
    storages: list[Storage] = []
    for spec in settings.storages:
        if isinstance(spec, FileStorage):
            storages.append(
                DiskStorage(
                    spec.root,
                    settings.chunk_size,
                    settings.disk_cache_seconds,
                    settings.disk_cache_bytes,
                    spec.accel_redirect,
                )
            )
        else:
            # Imported here: botocore costs ~40 MiB per worker that disk-only deployments need not pay.
            from .storage.s3 import S3Storage

            storages.append(S3Storage(spec, settings.s3, settings.chunk_size))
    return storages


def create_app(settings: Settings | None = None) -> Edge:
    """The uvicorn factory: each worker validates and builds its own app.

    With GATEWAY_METRICS_PORT set (by `serve --metrics-port`), /metrics is
    served on that port only, so the public port never exposes it.
    """
    settings = settings or load_settings()
    return Edge(settings, build_storages(settings), serve_metrics=not os.environ.get(METRICS_PORT_ENV))
