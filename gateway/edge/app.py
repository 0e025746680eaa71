"""The public edge: `GET`/`HEAD /<token>`, the listening page's files, plus health endpoints.

The file route is a plain ASGI callable rather than a Starlette endpoint:
it is the hot path, and at thousands of requests a second a framework
object per request and headers rebuilt each time are a visible share of the
time. Everything that does not need to be fast (health, readiness, lifespan)
is an ordinary Starlette app behind it (`control`).

A request goes: the link admission decides (`links.admission`: one place,
the one the link inspector reports from), then the answer is planned
(`http.plan`, pure) and sent (`http.send`), from the file, from a
rendition, or handed off to S3 or nginx; or it is the listening page
(`pages`). With CORS origins configured, every answer of this route gets
the CORS headers for its `Origin`, and preflights are answered.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache

from starlette.applications import Starlette

from ..common.media import media_type
from ..common.metrics import ACTIVE_STREAMS, STORAGE_ERRORS, VIEWS, RequestTally, child, worker_exiting
from ..config import Settings, load_settings
from ..http.asgi import Message, Receive, Scope, Send
from ..http.cors import Cors
from ..http.forwarded import client_address, parse_networks
from ..http.plan import Plan, Representation, plan, representation
from ..http.query import MAX_QUERY_BYTES, query_params
from ..http.replies import METHOD_NOT_ALLOWED, NOSNIFF, explained, fixed, send_reply
from ..http.representation import content_disposition, policy, shown_inline
from ..http.send import IncompleteBody, send_plan, streams
from ..ledger import Play
from ..links.admission import Admitted
from ..links.decision import Refusal, storage_failure
from ..services import Services, build_services
from ..storage import StorageUnavailable, StoredFile
from ..storage.specs import S3Storage as S3Spec
from ..transcode.spec import Refused
from .accesslog import AccessLog
from .control import control_app
from .drain import Drain
from .ledger import LedgerHook
from .pages import ASSETS, Pages
from .protocol import GuardedHttpToolsProtocol

log = logging.getLogger("gateway.edge")
RENDITION_BACKEND = "rendition"  # the `backend` of bytes sent from the rendition cache
QUERY_TOO_LONG = Refusal(414, "query", f"query string longer than {MAX_QUERY_BYTES} bytes")


class Exchange:
    """What one edge request did, for its metrics and its access-log line; its `send` passes messages on."""

    __slots__ = ("admitted", "backend", "began", "bytes", "cors", "detail", "head", "method", "plan", "play", "reason",
                 "rejected", "send", "size", "started", "status", "view")  # fmt: skip

    def __init__(self, method: str, send: Send) -> None:
        self.method = method if method == "GET" or method == "HEAD" else "OTHER"
        self.head = method == "HEAD"  # uvicorn sends no body for HEAD, whatever it is given
        self.send = send
        self.status = 500  # what uvicorn answers if we fail before starting a response
        self.started = False  # the response's headers are out
        self.bytes = 0
        self.backend = "none"
        self.reason = ""
        self.detail = ""
        self.rejected = False  # a refused link (gateway_rejected_total), not a view or a storage failure
        self.view = ""  # the views asked for beyond the plain link (player, channel, mask, split)
        self.cors: tuple[tuple[bytes, bytes], ...] = ()  # the CORS headers every answer gets, for its Origin
        self.began = time.perf_counter()
        # For the listening ledger: the link served, what was planned of it, and its listening session.
        self.admitted: Admitted | None = None
        self.plan: Plan | None = None
        self.size: int | None = None
        self.play: Play | None = None

    async def __call__(self, message: Message) -> None:
        """The ASGI `send` the request is answered through: counts what is sent."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            if self.cors:
                message = {**message, "headers": [*message["headers"], *self.cors]}
        elif not self.head:
            self.bytes += len(message.get("body", b""))
        await self.send(message)


class Edge:
    """ASGI entry: the token route, with the control app behind it."""

    def __init__(self, services: Services, serve_metrics: bool = True) -> None:
        self.services = services
        settings = services.settings
        self.edge = settings.edge
        self.admission = services.admission
        self.renditions = services.renditions
        self.representation = lru_cache(maxsize=4096)(self._representation)
        self.trusted_proxies = parse_networks(settings.edge.trusted_proxies)
        self.access_log = AccessLog() if settings.edge.access_log else None
        self.tally = RequestTally()
        self.cors = Cors(settings.edge.cors_origins)
        self.pages = Pages(services.signer, self.cors.origins)
        self.drain = Drain()
        self.control = control_app(services.storages, self.drain, self._lifespan, serve_metrics)
        self._control_paths = {route.path for route in self.control.routes}  # type: ignore[attr-defined]
        self.ledger = None
        if services.ledger is not None:
            self.ledger = LedgerHook(services.ledger, services.resolver, self.trusted_proxies, self.renditions.inline)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._control_paths:
            await self.serve_measured(scope, receive, send)
        else:
            await self.control(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.services.running() as stack:
            stack.callback(worker_exiting)
            stack.callback(self.tally.flush)  # before the worker says it is gone: nothing counted is lost
            if self.access_log is not None:
                stack.callback(self.access_log.close)  # after the drain: every line is written
            self.drain.watch_signals()
            yield

    def _representation(self, path: str, name: str, etag: str, mtime: int, inline: bool) -> Representation:
        """Headers for one version of a file as one link presents it (`name`, `inline` where it may show)."""
        content_type = media_type(path)
        disposition = content_disposition(name, inline and shown_inline(content_type))
        extra = ((b"content-disposition", disposition.encode()), policy(content_type))
        return representation(content_type, etag, mtime, self.edge.cache_control, *extra)

    # -- measuring -----------------------------------------------------------

    async def serve_measured(self, scope: Scope, receive: Receive, send: Send) -> None:
        """serve(), counted for the metrics and written to the access log."""
        exchange = Exchange(scope["method"], send)
        headers = dict(scope["headers"])
        if self.cors.origins:
            exchange.cors = self.cors.headers(headers.get(b"origin"))
        try:
            await self.serve(scope, headers, receive, exchange, exchange)
        finally:
            duration = time.perf_counter() - exchange.began
            self.tally.request(exchange.method, exchange.status, duration, exchange.backend, exchange.bytes)
            if exchange.reason and exchange.rejected:
                self.tally.rejected(exchange.reason)
            if self.access_log is not None:
                self._log_access(scope, headers, exchange, duration)
            if self.ledger is not None:
                self.ledger.record(scope, headers, exchange, duration)

    def _log_access(self, scope: Scope, headers: Mapping[bytes, bytes], exchange: Exchange, duration: float) -> None:
        client = scope.get("client")
        fields: dict[str, object] = {
            "time": self.access_log.stamp(),  # type: ignore[union-attr]
            "method": scope["method"],
            "status": exchange.status,
            "bytes": exchange.bytes,
            "duration": round(duration, 6),
            "backend": exchange.backend,
            "token": scope["path"][1:9],
            "client": client_address(client[0], headers.get(b"x-forwarded-for"), self.trusted_proxies)
            if client and self.trusted_proxies
            else client and client[0],
        }
        if exchange.reason:
            fields["reason"] = exchange.reason
            fields["detail"] = exchange.detail
        if exchange.view:
            fields["view"] = exchange.view
        if b"range" in headers:
            fields["range"] = headers[b"range"].decode("latin-1")[:100]
        if b"user-agent" in headers:
            fields["user_agent"] = headers[b"user-agent"].decode("latin-1")[:200]
        self.access_log.write(fields)  # type: ignore[union-attr]

    # -- the file route -------------------------------------------------------

    async def serve(
        self, scope: Scope, headers: Mapping[bytes, bytes], receive: Receive, send: Send, exchange: Exchange
    ) -> None:
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            preflight = self.cors.preflight(headers) if method == "OPTIONS" else None
            await send_reply(send, preflight or METHOD_NOT_ALLOWED)
            return
        if scope["path"].startswith(ASSETS):
            await self.pages.send_asset(scope["path"], send)
            return
        token = scope["path"][1:]
        if len(scope["query_string"]) > MAX_QUERY_BYTES:
            await _refuse(send, exchange, QUERY_TOO_LONG)
            return
        params = query_params(scope["query_string"])
        decision = await self.admission.admit(token, params)
        if isinstance(decision, Refusal):
            await _refuse(send, exchange, decision)
            return
        exchange.admitted = decision
        exchange.backend = decision.storage.label
        file = decision.file
        kinds = decision.view.kinds
        if kinds:
            exchange.view = ",".join(kinds)
            for kind in kinds:
                child(VIEWS, kind).inc()
        try:
            if decision.view.player:
                await self.pages.send_page(decision, params, send)
            elif decision.rendition is not None:
                await self._send_rendition(scope, headers, receive, send, exchange, decision)
            elif decision.handoff is not None:
                await self._handoff(send, decision)
            else:
                rep = self.representation(decision.path, decision.name, file.etag, file.mtime, decision.view.inline)
                await self._send(scope, headers, receive, send, file, rep, exchange)
        except Refused as exc:  # a conversion refused (503 at the limit, 415 when it fails)
            exchange.reason, exchange.detail = exc.reason, exc.message
            await send_reply(send, explained(exc.status, exc.message, exc.retry_after))
        except (StorageUnavailable, IncompleteBody) as exc:  # `backend`: the storage, or "rendition"
            kind = exc.kind if isinstance(exc, StorageUnavailable) else "truncated"
            log.error("storage %s failed while streaming token=%s kind=%s: %s", exchange.backend, token[:8], kind, exc)
            child(STORAGE_ERRORS, exchange.backend, kind).inc()
            exchange.reason, exchange.detail = "storage", kind
            if not exchange.started:
                await _refuse(send, exchange, storage_failure(kind))
            # else the headers are out: returning without finishing makes uvicorn abort the connection
        finally:
            await file.close()

    async def _send_rendition(
        self, scope: Scope, headers: Mapping[bytes, bytes], receive: Receive, send: Send, exchange: Exchange,
        decision: Admitted,
    ) -> None:  # fmt: skip
        """A rendition is always sent by the gateway itself: neither S3 nor nginx holds it."""
        assert decision.rendition is not None
        wants = decision.rendition.wants
        rendition = await self.renditions.open(decision.file, decision.rendition)
        exchange.backend = RENDITION_BACKEND
        try:
            rep = self.representation(
                wants.rename(decision.path), wants.rename(decision.name), rendition.etag, rendition.mtime,
                decision.view.inline,
            )  # fmt: skip
            await self._send(scope, headers, receive, send, rendition, rep, exchange)
        finally:
            await rendition.close()

    async def _send(
        self, scope: Scope, headers: Mapping[bytes, bytes], receive: Receive, send: Send, file: StoredFile,
        rep: Representation, exchange: Exchange,
    ) -> None:  # fmt: skip
        answer = plan(scope["method"], headers, rep, file.size, self.edge.max_ranges)
        exchange.plan, exchange.size = answer, file.size
        chunk = self.edge.chunk_size
        if not streams(answer, file, chunk):
            await send_plan(answer, file, chunk, receive, send)
        else:
            ACTIVE_STREAMS.inc()
            try:
                await send_plan(answer, file, chunk, receive, send)
            finally:
                ACTIVE_STREAMS.dec()
        if self.ledger is not None and exchange.admitted is not None and exchange.admitted.view.inline:
            await self.ledger.sent(exchange, file, rep)

    async def _handoff(self, send: Send, decision: Admitted) -> None:
        """Let another server send the bytes, with the name and type we decided.

        S3 gets a 302 to a presigned URL that makes it answer with our
        Content-Type and Content-Disposition. nginx gets X-Accel-Redirect to
        an internal location, plus the headers it passes on from us; it then
        serves the file with sendfile, ranges and validators included.
        """
        content_type = media_type(decision.path)
        disposition = content_disposition(decision.name, decision.view.inline and shown_inline(content_type))
        url = await decision.storage.handoff_url(decision.file, decision.path, content_type, disposition)
        if decision.handoff == "redirect":
            headers = [(b"location", url.encode("latin-1")), (b"cache-control", b"no-store")]
        else:
            headers = [
                (b"x-accel-redirect", url.encode("latin-1")),
                (b"content-type", content_type.encode()),
                (b"content-disposition", disposition.encode()),
                (b"cache-control", self.edge.cache_control.encode()),
                policy(content_type),
            ]
        headers += [(b"content-length", b"0"), NOSNIFF]
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, exchange: Exchange, refusal: Refusal) -> None:
    """Refuse: the reason goes to the log (token cut to 8) and the metric, never to the client."""
    exchange.reason, exchange.detail, exchange.rejected = refusal.reason, refusal.detail, refusal.of_link
    if refusal.message is not None:
        await send_reply(send, explained(refusal.status, refusal.message, refusal.retry_after))
    else:
        await send_reply(send, fixed(refusal.status))


def create_app(settings: Settings | None = None) -> Edge:
    """The uvicorn factory: each worker validates and builds its own app.

    /metrics is served on the metrics port (by `serve`'s supervising
    process), never on this public port unless `edge.public_metrics` says so.
    """
    settings = settings or load_settings()
    s3_connections = (
        settings.s3.max_pool_connections + 16 if any(isinstance(s, S3Spec) for s in settings.storages) else 0
    )
    GuardedHttpToolsProtocol.configure(settings.edge.header_timeout, settings.edge.max_connections, s3_connections)
    return Edge(build_services(settings), serve_metrics=settings.edge.public_metrics)
