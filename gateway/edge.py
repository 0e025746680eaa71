"""The public edge: `GET`/`HEAD /<token>` plus health endpoints.

The file route is a plain ASGI callable rather than a Starlette endpoint:
it is the hot path, and at thousands of requests a second a framework
object per request and headers rebuilt each time are a visible share of the
time. Everything that does not need to be fast (health, readiness, lifespan)
is an ordinary Starlette app behind it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .accesslog import client_address, parse_networks
from .accesslog import write as write_access
from .asgi import Headers, Message, Receive, Scope, Send
from .conditions import if_range_allows, precondition_status
from .config import Settings, load_settings
from .headers import content_disposition, http_date, media_type
from .lifecycle import Drain, serving
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import DURATION, REJECTED, REQUESTS, RESPONSE_BYTES, STORAGE_ERRORS, child, exposition, worker_exiting
from .multipart import multipart_plan, new_boundary
from .ranges import RangeNotSatisfiable, Span, content_range, parse_range
from .replies import (
    METHOD_NOT_ALLOWED,
    NOSNIFF,
    PRECONDITION_FAILED,
    REFUSALS,
    Reply,
    plain,
    range_not_satisfiable,
    send_reply,
    storage_failure,
)
from .resolver import Resolver, Unresolved
from .revocation import Revocations
from .signing import SIGNATURE, LinkRefused, LinkSigner
from .storage import Storage, StorageUnavailable, StoredFile
from .storage.configured import build_storages
from .streaming import file_pieces, multipart_pieces, stream_body
from .transcode.renditions import Renditions, source_name
from .transcode.request import Refused

log = logging.getLogger("gateway.edge")
METRICS_PORT_ENV = "GATEWAY_METRICS_PORT"

_CONDITIONAL = (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
_TRUE = {"1", "true", "yes", "on"}
RENDITION_BACKEND = "rendition"  # the `backend` of bytes sent from the rendition cache


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


_NO_PARAMS: Mapping[str, str] = MappingProxyType({})


@lru_cache(maxsize=4096)
def _parsed_query(query: bytes) -> Mapping[str, str]:
    return MappingProxyType(dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)))


def _query_params(query: bytes) -> Mapping[str, str]:
    """The query string as a read-only mapping (last value wins), parsed once per distinct query."""
    return _parsed_query(query) if query else _NO_PARAMS


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
        self.drain = Drain()
        self.renditions = Renditions(settings.transcode, settings.chunk_size)
        # What names each storage in rendition cache keys (its root or bucket, not just its label).
        self._sources = {
            id(storage): source_name(spec, settings) for storage, spec in zip(self.storages, settings.storages)
        }
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
        async with serving(self.storages, self.revocations) as stack:
            await self.renditions.start()
            stack.push_async_callback(self.renditions.aclose)
            stack.callback(worker_exiting)
            self.drain.watch_signals()
            yield

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
            not self.drain.started
            and any(ok for _, ok in states)
            and all(ok for storage, ok in states if storage.local)
        )
        if self.drain.started:
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
            NOSNIFF,
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
            await send_reply(send, METHOD_NOT_ALLOWED)
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
            await send_reply(send, storage_failure(exc))
            return
        exchange.backend = storage.label
        try:
            if self.revocations.revoked(token, path):
                await _reject(send, exchange, token, "revoked", "link or file revoked", 410)
                return
            inline = params.get("inline", "").lower() in _TRUE
            # Only a signed link may rename the download: the name is part of what was signed.
            name = (signed and params.get("filename", "").rpartition("/")[2]) or path.rpartition("/")[2]
            # A rendition (?format=, ?peaks=, or inline audio browsers cannot play) is always
            # sent by the gateway itself: neither S3 nor nginx holds it.
            wanted = self.renditions.wanted(params, inline)
            if wanted is not None:
                try:
                    rendition = await self.renditions.open(file, self._source(storage), path, wanted)
                except StorageUnavailable as exc:
                    await send_reply(send, storage_failure(exc))  # nothing was sent yet
                    raise
                if rendition is not None:
                    exchange.backend = RENDITION_BACKEND
                    try:
                        rep = self.representation(
                            wanted.rename(path), wanted.rename(name), rendition.etag, rendition.mtime, inline
                        )
                        await self._respond(scope, receive, send, rendition, rep)
                    finally:
                        await rendition.close()
                    return
            if storage.handoff is not None:
                await self._handoff(send, storage, path, name, inline)
            else:
                await self._respond(
                    scope, receive, send, file, self.representation(path, name, file.etag, file.mtime, inline)
                )
        except Refused as exc:
            exchange.reason, exchange.detail = exc.reason, exc.message
            await send_reply(send, _refusal(exc))
        except StorageUnavailable as exc:  # `backend`: the storage, or "rendition" for a conversion cut short
            backend = exchange.backend
            log.error("storage %s failed while streaming token=%s kind=%s: %s", backend, token[:8], exc.kind, exc)
            child(STORAGE_ERRORS, backend, exc.kind).inc()
            exchange.reason, exchange.detail = "storage", exc.kind
        finally:
            await file.close()

    def _source(self, storage: Storage) -> str:
        return self._sources.get(id(storage)) or f"{storage.label}:{storage!r}"

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
        headers += [(b"content-length", b"0"), NOSNIFF]
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
                await send_reply(send, PRECONDITION_FAILED)
                return

        spans: tuple[Span, ...] | None = None
        range_header = request_headers.get(b"range")
        if range_header is not None and method == "GET":
            if_range = request_headers.get(b"if-range")
            if if_range_allows(None if if_range is None else if_range.decode("latin-1"), rep.etag, rep.mtime):
                try:
                    spans = parse_range(range_header.decode("latin-1"), file.size, self.settings.max_ranges)
                except RangeNotSatisfiable:
                    await send_reply(send, range_not_satisfiable(file.size))
                    return

        multipart = spans is not None and len(spans) > 1
        if not multipart:
            span = spans[0] if spans else (0, file.size)
            length = span[1] - span[0]
            headers = [*rep.headers, (b"content-length", str(length).encode())]
            if spans:
                headers.append((b"content-range", content_range(span, file.size).encode()))
        else:
            boundary = new_boundary()
            length, parts, closing = multipart_plan(spans, file.size, rep.content_type, boundary)
            headers = [
                (b"content-type", f"multipart/byteranges; boundary={boundary}".encode()),
                *rep.headers[1:],
                (b"content-length", str(length).encode()),
            ]
        start = {"type": "http.response.start", "status": 206 if spans else 200, "headers": headers}
        if method == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b""})
        elif multipart:
            await stream_body(
                start, multipart_pieces(file, parts, closing), length, self.settings.chunk_size, receive, send
            )
        elif file.whole is not None:
            # A small file already in memory: one send, none of the streaming machinery.
            # A range goes out as a memoryview: uvicorn writes any bytes-like body, and
            # the copy a slice would make was a measurable share of a ranged request.
            body = memoryview(file.whole)[span[0] : span[1]] if spans else file.whole
            await send(start)
            await send({"type": "http.response.body", "body": body})
        else:
            await stream_body(start, file_pieces(file, (span,)), length, self.settings.chunk_size, receive, send)


async def _reject(send: Send, exchange: Exchange, token: str, reason: str, detail: str, status: int) -> None:
    """Refuse a link: the reason goes to the log (token cut to 8) and the metric, never to the client."""
    child(REJECTED, reason).inc()
    exchange.reason, exchange.detail = reason, detail
    await send_reply(send, REFUSALS[status])


def _refusal(exc: Refused) -> Reply:
    """400, 415 or 503 for a rendition, with what went wrong in the body (the link itself was good)."""
    extra = [(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after else []
    return plain(exc.status, exc.message, *extra)


def create_app(settings: Settings | None = None) -> Edge:
    """The uvicorn factory: each worker validates and builds its own app.

    With GATEWAY_METRICS_PORT set (by `serve --metrics-port`), /metrics is
    served on that port only, so the public port never exposes it.
    """
    settings = settings or load_settings()
    return Edge(settings, build_storages(settings), serve_metrics=not os.environ.get(METRICS_PORT_ENV))
