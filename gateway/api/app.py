"""The link API: an internal, authenticated Starlette app that issues and explains links.

It shares the services of the edge (keys, storages, revocations, the link
admission), built by `services`, and issues links the edge serves: plain
legacy links (byte for byte what the telephony platform makes) or signed
links when an expiry, a download name, inline playback or a view (the
listening page, a channel, a mask) is asked for (or when the edge refuses
unsigned links). Requests and answers are the types
of `models`; the OpenAPI document is made from them and the route table.

Clients authenticate with a bearer token; only its SHA-256 is configured
(`GATEWAY_API_CLIENTS`), and each client may only link to, and look at,
paths under its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..config import ConfigError, Settings, load_settings
from ..links.clients import ApiClient
from ..links.inspect import LinkReport, NotALink, iso8601
from ..links.issuing import Issuer
from ..links.masks import MaskError, canonical
from ..links.paths import PathRefused, confine
from ..links.resolver import Unresolved
from ..links.tokens import TokenError
from ..services import Services, build_services
from ..storage import StorageUnavailable
from ..transcode.probe import Probe
from . import models
from .openapi import Operation, document

log = logging.getLogger("gateway.api")

MAX_BODY_BYTES = 8 * 1024 * 1024
CONCURRENCY = 16  # lookups at once for one batch or check
T = TypeVar("T")
NOT_A_LINK = "not a link this gateway opens"
_NO_STORE = {"cache-control": "no-store"}
_REALM = 'Bearer realm="storage-gateway"'

OPERATIONS = (
    Operation("/v1/links", "POST", "Issue a link to one recording", models.LinkRequest, models.Link,
              ((400, "Malformed JSON or an invalid field"), (403, "The path is outside the client's prefix"))),
    Operation("/v1/links/batch", "POST", "Issue many links at once, each answered or refused on its own",
              models.LinkBatch, models.Links, ((400, "Malformed JSON, links missing or not a list, too many"),)),
    Operation("/v1/links/resolve", "POST", "Explain one link", models.ResolveRequest, models.LinkReport,
              ((400, "Malformed JSON, or not a link this gateway opens for this client"),)),
    Operation("/v1/links/check", "POST", "Check many links: existence, size, real type, whether served",
              models.CheckRequest, models.CheckedLinks, ((400, "Malformed JSON, links missing or not a list"),)),
    Operation("/healthz", "GET", "Liveness", answer=models.Health, authenticated=False),
    Operation("/openapi.json", "GET", "The OpenAPI description of this API", authenticated=False),
)  # fmt: skip


class ApiError(Exception):
    """A refused request (or batch item): the status and a message naming the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> models.Error:
        return models.Error(models.ErrorDetail(self.status, self.message, self.field))


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", field)


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(data), status, {**_NO_STORE, **(headers or {})}, "application/json")


class LinkAPI:
    """The app's state and endpoints; `app` is the ASGI application."""

    def __init__(self, services: Services, clock: Callable[[], float] = time.time) -> None:
        settings = services.settings
        if not settings.public_url:
            raise ConfigError("GATEWAY_PUBLIC_URL", "the link API needs the edge's public base URL to issue links")
        if not settings.clients:
            raise ConfigError(
                "GATEWAY_API_CLIENTS",
                "no link-API clients configured (make one with `storage-gateway api-client add ID --prefix /…/`)",
            )
        self.services = services
        self.clients = settings.clients
        self.issuer = Issuer(
            settings.keys[0], services.signer, settings.public_url, settings.edge.require_signed, clock
        )
        endpoints = {
            "/v1/links": self.create_link,
            "/v1/links/batch": self.create_links,
            "/v1/links/resolve": self.resolve,
            "/v1/links/check": self.check,
            "/healthz": self.healthz,
            "/openapi.json": self.openapi,
        }
        routes = [Route(op.path, endpoints[op.path], methods=[op.method]) for op in OPERATIONS]
        self.app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={ApiError: self._api_error, HTTPException: self._http_error, Exception: self._crash},
        )
        self.openapi_document = msgspec.json.encode(document(OPERATIONS))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.services.running():
            yield

    # -- errors ------------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _json(exc.body(), exc.status, exc.headers)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json(ApiError(exc.status_code, exc.detail).body(), exc.status_code, dict(exc.headers or {}))

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.exception("link API request failed: %s %s", request.method, request.url.path)
        return _json(ApiError(500, "internal error").body(), 500)

    # -- request plumbing ---------------------------------------------------

    def authenticate(self, request: Request) -> ApiClient:
        """The client whose token hash matches, comparing with every client (constant time, no early exit)."""
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "missing Authorization: Bearer <token>", headers={"www-authenticate": _REALM})
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials or any(c.isspace() for c in credentials):
            raise ApiError(
                401,
                "the Authorization header must be 'Bearer <token>'",
                headers={"www-authenticate": f'{_REALM}, error="invalid_request"'},
            )
        presented = hashlib.sha256(credentials.encode("latin-1")).digest()
        found: ApiClient | None = None
        for client in self.clients:
            matches = hmac.compare_digest(presented, client.token_sha256)
            if matches and found is None:
                found = client
        if found is None:
            log.info("link API: refused a bearer token from %s", request.client.host if request.client else "?")
            raise ApiError(
                401, "unknown bearer token", headers={"www-authenticate": f'{_REALM}, error="invalid_token"'}
            )
        return found

    async def body(self, request: Request, kind: type[Any]) -> Any:
        """The body decoded as `kind`, bounded in size; 400 naming the field at fault."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
            chunks.append(chunk)
        return _decoded(b"".join(chunks), kind)

    # -- issuing ------------------------------------------------------------

    async def issue(self, client: ApiClient, wanted: models.LinkRequest) -> models.Link:
        """One link, or ApiError (400 invalid, 403 outside the client's prefix, 404 no such recording).

        In legacy mode every token the API hands out is also a legacy link,
        signed or not (strip the query), and ECB encrypts each 16-byte
        block alone: a client that could choose its path freely could cut
        a token for any path out of one for a path under its prefix. So a
        client limited to a prefix gets links only to recordings that exist
        (their names are not chosen by it); in strict mode every link is
        signed over its whole token, and links may be made ahead.

        A channel and a mask are checked against the recording when it
        exists (its channels, its duration as its container declares it); a
        link made ahead of the recording cannot be, and the edge then
        silences a span past the end only as far as the recording goes.
        """
        try:
            confined = confine(wanted.path)
        except PathRefused as exc:
            raise _bad("path", f"refused: {exc}") from None
        if not client.allows(confined):
            raise ApiError(403, f"path: outside this client's prefix {client.display_prefix}", "path")
        try:
            mask = canonical(wanted.mask or ())
        except MaskError as exc:
            raise _bad("mask", str(exc)) from None
        must_exist = client.scoped and not self.issuer.require_signed
        checked = bool(mask) or wanted.channel is not None
        if must_exist or checked:
            found = await self._recording(confined, must_exist, checked)
            if found is not None:
                _fits(found, wanted)
        issued = self.issuer.issue(
            confined,
            expires_in=wanted.expires_in,
            inline=bool(wanted.inline),
            filename=wanted.filename,
            player=bool(wanted.player),
            channel=wanted.channel,
            mask=mask,
        )
        expires_at = None if issued.expires_at is None else iso8601(issued.expires_at)
        return models.Link(issued.record_url, expires_at, issued.path, issued.signed)

    async def _recording(self, confined: str, must_exist: bool, describe: bool) -> Probe | None:
        """What the recording holds (when `describe`), or None; 404 when it `must_exist` and does not."""
        unknown = "the storage cannot say now whether the recording exists; retry"
        try:
            file, path, storage = await self.services.resolver.lookup([confined])
        except Unresolved:
            if must_exist:
                raise ApiError(404, "path: no such recording", "path") from None
            return None
        except StorageUnavailable:
            raise ApiError(503, f"path: {unknown}", "path") from None
        try:
            return await self.services.renditions.describe(file, storage.name, path) if describe else None
        except StorageUnavailable:
            raise ApiError(503, f"path: {unknown}", "path") from None
        finally:
            await file.close()

    async def create_link(self, request: Request) -> Response:
        client = self.authenticate(request)
        result = await self.issue(client, await self.body(request, models.LinkRequest))
        log.info("link API: client=%s issued 1 link", client.id)
        return _json(result)

    async def create_links(self, request: Request) -> Response:
        client = self.authenticate(request)
        batch: models.LinkBatch = await self.body(request, models.LinkBatch)

        async def one(item: msgspec.Raw) -> models.Link:
            return await self.issue(client, _decoded(item, models.LinkRequest))

        results = await _each(batch.links, one)
        log.info("link API: client=%s batch of %d", client.id, len(batch.links))
        return _json(models.Links(list(results)))

    # -- explaining ---------------------------------------------------------

    async def report(self, client: ApiClient, link: str, read_head: bool) -> LinkReport:
        """The inspector's report, or 400 NOT_A_LINK: the same answer for garbage and for what the client may not see."""
        await self.services.revocations.load()  # one stat: reports are as fresh as the file
        try:
            return await self.services.inspector.inspect(link, client.allows, read_head)
        except (TokenError, NotALink):
            raise _bad("link", NOT_A_LINK) from None

    async def resolve(self, request: Request) -> Response:
        client = self.authenticate(request)
        wanted: models.ResolveRequest = await self.body(request, models.ResolveRequest)
        report = await self.report(client, wanted.link, read_head=False)
        return _json(msgspec.convert(report.as_json(), models.LinkReport))

    async def check(self, request: Request) -> Response:
        client = self.authenticate(request)
        wanted: models.CheckRequest = await self.body(request, models.CheckRequest)

        async def one(item: msgspec.Raw) -> models.CheckedLink:
            link = _decoded(item, models.LinkText, whole="link")
            report = await self.report(client, link, read_head=True)
            return msgspec.convert({"link": link, **report.as_json()}, models.CheckedLink)

        results = await _each(wanted.links, one)
        return _json(models.CheckedLinks(list(results)))

    # -- open endpoints -----------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return _json(models.Health("ok"))

    async def openapi(self, request: Request) -> Response:
        return Response(self.openapi_document, headers=_NO_STORE, media_type="application/json")


async def _each(items: list[msgspec.Raw], work: Callable[[msgspec.Raw], Awaitable[T]]) -> list[T | models.Error]:
    """`work` on every item of a batch, CONCURRENCY at a time, in order; an item it refuses is its error."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(item: msgspec.Raw) -> T | models.Error:
        async with gate:
            try:
                return await work(item)
            except ApiError as exc:
                return exc.body()

    return list(await asyncio.gather(*(one(item) for item in items)))


def _fits(found: Probe, wanted: models.LinkRequest) -> None:
    """400 when the recording is known to lack the channel asked, or to end before a span of the mask.

    Of a file that is not audio nothing is known: the edge answers it (415) whatever the link says.
    """
    lacking = found.lacking(wanted.channel)
    if lacking is not None:
        raise _bad("channel", lacking)
    if found.duration is None:
        return
    for number, (_, end) in enumerate(wanted.mask or (), 1):
        if end > found.duration + 0.001:  # the mask keeps milliseconds
            raise _bad(
                "mask", f"span {number} ends at {end:g} s, after the end of the recording ({found.duration:g} s)"
            )


def _decoded(data: bytes, kind: Any, whole: str = "body") -> Any:
    try:
        return models.decode(data, kind, whole)
    except models.Invalid as exc:
        raise _bad(exc.field, exc.problem) from None


def build_api(settings: Settings, clock: Callable[[], float] = time.time) -> LinkAPI:
    return LinkAPI(build_services(settings, converting=False, clock=clock), clock)


def create_api_app(settings: Settings | None = None) -> LinkAPI:
    """The uvicorn factory for the link API."""
    return build_api(settings or load_settings())
