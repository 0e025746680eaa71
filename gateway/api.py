"""The link API: an internal, authenticated Starlette app that issues and explains links.

It shares the key, storage and revocation configuration with the edge, and
issues links the edge serves: plain legacy links (byte for byte what the
telephony platform makes) or signed links when an expiry, a download name or
inline playback is asked for (or when the edge refuses unsigned links).

Clients authenticate with a bearer token; only its SHA-256 is configured
(`GATEWAY_API_CLIENTS`), and each client may only link to, and look at,
paths under its own prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from . import __version__
from .config import ApiClient, ConfigError, Settings, load_settings
from .lifecycle import serving
from .linkinfo import LinkInspector, LinkReport, OutsidePrefix, iso8601
from .paths import PathRefused, confine
from .revocation import Revocations
from .signing import EXPIRES, LinkSigner
from .storage import Storage
from .tokens import TokenError, encrypt_path

log = logging.getLogger("gateway.api")

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_BATCH = 1000
MAX_CHECK = 100
MAX_EXPIRES_IN = 10 * 366 * 24 * 3600  # ten years: longer is "forever", which is what a plain link is
MAX_FILENAME_BYTES = 255
MAX_LINK_CHARS = 8192
CHECK_CONCURRENCY = 16
LINK_FIELDS = ("path", "expires_in", "filename", "inline")
_NO_STORE = {"cache-control": "no-store"}
_FILENAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029/\\\\]")
_REALM = 'Bearer realm="storage-gateway"'


class ApiError(Exception):
    """A refused request (or batch item): the status and a message naming the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(400, f"{field}: {problem}", field)


@dataclass(frozen=True)
class LinkRequest:
    path: str  # confined: 300/x.mp3
    expires_in: int | None
    filename: str | None
    inline: bool


def parse_link_request(item: object) -> LinkRequest:
    """Validate one `{"path": …, "expires_in": …, "filename": …, "inline": …}` (null means absent)."""
    if not isinstance(item, dict):
        raise _bad("body", "expected a JSON object")
    unknown = sorted(set(item) - set(LINK_FIELDS))
    if unknown:
        raise _bad(unknown[0], f"unknown field (known: {', '.join(LINK_FIELDS)})")
    path = item.get("path")
    if path is None:
        raise _bad("path", "is required")
    if not isinstance(path, str):
        raise _bad("path", "must be a string")
    if not path:
        raise _bad("path", "must not be empty")
    try:
        confined = confine(path)
    except PathRefused as exc:
        raise _bad("path", f"refused: {exc}") from None
    expires_in = item.get("expires_in")
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise _bad("expires_in", "must be a whole number of seconds")
        if not 1 <= expires_in <= MAX_EXPIRES_IN:
            raise _bad("expires_in", f"must be between 1 and {MAX_EXPIRES_IN} seconds")
    filename = item.get("filename")
    if filename is not None:
        if not isinstance(filename, str):
            raise _bad("filename", "must be a string")
        if not filename or filename in (".", ".."):
            raise _bad("filename", "must be a file name")
        if _FILENAME_FORBIDDEN.search(filename):
            raise _bad("filename", "must not contain slashes, backslashes or control characters")
        if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
            raise _bad("filename", f"longer than {MAX_FILENAME_BYTES} bytes")
        try:
            filename.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("filename", "is not valid Unicode") from None
    inline = item.get("inline")
    if inline is not None and not isinstance(inline, bool):
        raise _bad("inline", "must be true or false")
    return LinkRequest(confined, expires_in, filename, bool(inline))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


OPENAPI_BASE: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "storage-gateway link API",
        "version": __version__,
        "description": "Issue and explain links to call recordings served by the storage-gateway edge.",
    },
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "LinkRequest": {
                "type": "object",
                "required": ["path"],
                "additionalProperties": False,
                "properties": {
                    "path": {"type": "string", "example": "/300/2017-02-17-11-05-04_in_300_uhl4.mp3"},
                    "expires_in": {"type": "integer", "minimum": 1, "maximum": MAX_EXPIRES_IN, "nullable": True},
                    "filename": {"type": "string", "maxLength": MAX_FILENAME_BYTES, "nullable": True},
                    "inline": {"type": "boolean", "nullable": True},
                },
            },
            "Link": {
                "type": "object",
                "properties": {
                    "record_url": {"type": "string", "format": "uri"},
                    "expires_at": {"type": "string", "format": "date-time", "nullable": True},
                    "path": {"type": "string"},
                    "signed": {"type": "boolean"},
                },
            },
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "integer"},
                            "message": {"type": "string"},
                            "field": {"type": "string"},
                        },
                    }
                },
            },
            "LinkReport": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "key": {
                        "type": "object",
                        "properties": {"index": {"type": "integer"}, "fingerprint": {"type": "string"}},
                    },
                    "signed": {"type": "boolean"},
                    "signature_valid": {"type": "boolean", "nullable": True},
                    "expires_at": {"type": "string", "format": "date-time", "nullable": True},
                    "expired": {"type": "boolean"},
                    "revoked": {"type": "boolean"},
                    "exists": {"type": "boolean", "nullable": True},
                    "size": {"type": "integer", "nullable": True},
                    "content_type": {"type": "string"},
                    "last_modified": {"type": "string", "format": "date-time", "nullable": True},
                    "storage": {"type": "string", "nullable": True},
                    "served": {"type": "boolean"},
                    "status": {"type": "integer"},
                    "reason": {"type": "string", "nullable": True},
                },
            },
        },
    },
}


class LinkAPI:
    """The app's state and endpoints; `app` is the ASGI application."""

    def __init__(
        self,
        settings: Settings,
        storages: Sequence[Storage],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.public_url:
            raise ConfigError("GATEWAY_PUBLIC_URL", "the link API needs the edge's public base URL to issue links")
        if not settings.clients:
            raise ConfigError(
                "GATEWAY_API_CLIENTS",
                "no link-API clients configured (make one with `storage-gateway api-client add ID --prefix /…/`)",
            )
        self.settings = settings
        self.public_url = settings.public_url
        self.clients = settings.clients
        self.storages = tuple(storages)
        self.clock = clock
        self.signer = LinkSigner(settings.keys)
        self.revocations = Revocations(settings.revocation_file)
        self.inspector = LinkInspector(
            settings.keys, self.storages, self.revocations, settings.require_signed, clock=clock
        )
        routes = [
            Route("/v1/links", self.create_link, methods=["POST"]),
            Route("/v1/links/batch", self.create_links, methods=["POST"]),
            Route("/v1/links/resolve", self.resolve, methods=["POST"]),
            Route("/v1/links/check", self.check, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        self.app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={ApiError: self._api_error, HTTPException: self._http_error, Exception: self._crash},
        )
        # Built once, from the routes and their docstrings (YAML: needs PyYAML), so a problem shows at start.
        self.openapi_document = SchemaGenerator(OPENAPI_BASE).get_schema(self.app.routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with serving(self.storages, self.revocations):
            yield

    # -- errors ------------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers={**_NO_STORE, **exc.headers})

    async def _http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        body = ApiError(exc.status_code, exc.detail).body()
        return JSONResponse(body, status_code=exc.status_code, headers={**_NO_STORE, **(exc.headers or {})})

    async def _crash(self, request: Request, exc: Exception) -> JSONResponse:
        log.exception("link API request failed: %s %s", request.method, request.url.path)
        return JSONResponse(ApiError(500, "internal error").body(), status_code=500, headers=_NO_STORE)

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

    async def json_object(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object, bounded in size."""
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
        try:
            data = json.loads(b"".join(chunks), parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise _bad("body", f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise _bad("body", "expected a JSON object")
        return data

    @staticmethod
    def _only(body: dict[str, Any], *fields: str) -> None:
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise _bad(unknown[0], f"unknown field (known: {', '.join(fields)})")

    @staticmethod
    def _list(body: dict[str, Any], field: str, limit: int) -> list[Any]:
        items = body.get(field)
        if items is None:
            raise _bad(field, "is required")
        if not isinstance(items, list):
            raise _bad(field, "must be a list")
        if len(items) > limit:
            raise _bad(field, f"at most {limit} items per request (got {len(items)})")
        return items

    @staticmethod
    def _reply(data: dict[str, Any]) -> JSONResponse:
        return JSONResponse(data, headers=_NO_STORE)

    # -- issuing ------------------------------------------------------------

    def issue(self, client: ApiClient, item: object) -> dict[str, Any]:
        """One link for one request item, or ApiError (400 invalid, 403 outside the client's prefix)."""
        wanted = parse_link_request(item)
        if not client.allows(wanted.path):
            raise ApiError(403, f"path: outside this client's prefix {client.display_prefix}", "path")
        path = "/" + wanted.path
        token = encrypt_path(path, self.settings.keys[0])
        params: dict[str, str] = {}
        expires_at: int | None = None
        if wanted.expires_in is not None:
            expires_at = int(self.clock()) + wanted.expires_in
            params[EXPIRES] = str(expires_at)
        if wanted.inline:
            params["inline"] = "1"
        if wanted.filename is not None:
            params["filename"] = wanted.filename
        url = f"{self.public_url}/{token}"
        signed = bool(params) or self.settings.require_signed
        if signed:
            url += "?" + self.signer.sign(token, params)
        return {
            "record_url": url,
            "expires_at": None if expires_at is None else iso8601(expires_at),
            "path": path,
            "signed": signed,
        }

    async def create_link(self, request: Request) -> JSONResponse:
        """Issue one link.

        Without expires_in, filename and inline the link is the plain legacy
        link; with any of them it is signed.
        ---
        summary: Issue a link to one recording
        requestBody:
          required: true
          content:
            application/json:
              schema: {$ref: '#/components/schemas/LinkRequest'}
        responses:
          '200':
            description: The link
            content:
              application/json:
                schema: {$ref: '#/components/schemas/Link'}
          '400': {description: Malformed JSON or an invalid field, content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
          '401': {description: Missing or unknown bearer token}
          '403': {description: The path is outside the client's prefix}
        """
        client = self.authenticate(request)
        result = self.issue(client, await self.json_object(request))
        log.info("link API: client=%s issued 1 link", client.id)
        return self._reply(result)

    async def create_links(self, request: Request) -> JSONResponse:
        """Issue up to 1000 links; each item is answered or refused on its own, in order.
        ---
        summary: Issue many links at once
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [links]
                properties:
                  links:
                    type: array
                    maxItems: 1000
                    items: {$ref: '#/components/schemas/LinkRequest'}
        responses:
          '200':
            description: One result per item, in the same order
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    results:
                      type: array
                      items:
                        oneOf:
                          - {$ref: '#/components/schemas/Link'}
                          - {$ref: '#/components/schemas/Error'}
          '400': {description: Malformed JSON, links missing or not a list, or more than 1000 items}
          '401': {description: Missing or unknown bearer token}
        """
        client = self.authenticate(request)
        body = await self.json_object(request)
        self._only(body, "links")
        items = self._list(body, "links", MAX_BATCH)
        results: list[dict[str, Any]] = []
        for item in items:
            try:
                results.append(self.issue(client, item))
            except ApiError as exc:
                results.append(exc.body())
        log.info("link API: client=%s batch of %d", client.id, len(items))
        return self._reply({"results": results})

    # -- explaining ---------------------------------------------------------

    async def report(self, client: ApiClient, link: object, read_head: bool) -> LinkReport:
        if not isinstance(link, str):
            raise _bad("link", "must be a string")
        if not link.strip():
            raise _bad("link", "must not be empty")
        if len(link) > MAX_LINK_CHARS:
            raise _bad("link", f"longer than {MAX_LINK_CHARS} characters")
        await self.revocations.load()  # one stat: reports are as fresh as the file
        try:
            report = await self.inspector.inspect(link, client.allows, read_head)
        except TokenError as exc:
            raise _bad("link", f"not a link this gateway opens ({exc.reason}: {exc})") from None
        except OutsidePrefix:
            raise ApiError(
                403, f"link: names a path outside this client's prefix {client.display_prefix}", "link"
            ) from None
        if report.path_refused:
            raise _bad("link", "the path inside the link is refused (outside the storage root or malformed)")
        return report

    async def resolve(self, request: Request) -> JSONResponse:
        """What a link names and whether the edge serves it.
        ---
        summary: Explain one link
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [link]
                properties:
                  link: {type: string, description: A record_url or a bare token}
        responses:
          '200':
            description: The report
            content:
              application/json:
                schema: {$ref: '#/components/schemas/LinkReport'}
          '400': {description: Malformed JSON, or a link that does not decode or decrypt}
          '401': {description: Missing or unknown bearer token}
          '403': {description: The link names a path outside the client's prefix}
        """
        client = self.authenticate(request)
        body = await self.json_object(request)
        self._only(body, "link")
        if "link" not in body:
            raise _bad("link", "is required")
        report = await self.report(client, body["link"], read_head=False)
        return self._reply(report.as_json())

    async def check(self, request: Request) -> JSONResponse:
        """Check up to 100 links: existence, size, real content type, and whether the edge serves them.
        ---
        summary: Check many links
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [links]
                properties:
                  links:
                    type: array
                    maxItems: 100
                    items: {type: string}
        responses:
          '200':
            description: One result per link, in the same order
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    results:
                      type: array
                      items:
                        oneOf:
                          - allOf:
                              - {$ref: '#/components/schemas/LinkReport'}
                              - type: object
                                properties:
                                  link: {type: string}
                                  detected_type: {type: string, nullable: true}
                                  detected_format: {type: string, nullable: true}
                                  type_mismatch: {type: boolean, nullable: true}
                          - {$ref: '#/components/schemas/Error'}
          '400': {description: Malformed JSON, links missing or not a list, or more than 100 items}
          '401': {description: Missing or unknown bearer token}
        """
        client = self.authenticate(request)
        body = await self.json_object(request)
        self._only(body, "links")
        items = self._list(body, "links", MAX_CHECK)
        gate = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def one(link: object) -> dict[str, Any]:
            async with gate:
                try:
                    report = await self.report(client, link, read_head=True)
                except ApiError as exc:
                    return exc.body()
            return {"link": link, **report.as_json()}

        results = await asyncio.gather(*(one(link) for link in items))
        return self._reply({"results": list(results)})

    # -- open endpoints -----------------------------------------------------

    async def healthz(self, request: Request) -> JSONResponse:
        """The process is alive (no authentication).
        ---
        summary: Liveness
        security: []
        responses:
          '200': {description: Alive}
        """
        return self._reply({"status": "ok"})

    async def openapi(self, request: Request) -> JSONResponse:
        """This document (no authentication).
        ---
        summary: The OpenAPI description of this API
        security: []
        responses:
          '200': {description: The OpenAPI document}
        """
        return self._reply(self.openapi_document)


def build_api(settings: Settings, clock: Callable[[], float] = time.time) -> LinkAPI:
    from .storage.configured import build_storages

    return LinkAPI(settings, build_storages(settings), clock)


def create_api_app(settings: Settings | None = None) -> LinkAPI:
    """The uvicorn factory for the link API."""
    return build_api(settings or load_settings())
