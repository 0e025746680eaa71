"""The answer to a GET or HEAD of one representation, planned as a pure function.

Given the method, the request's headers and what the server says about the
representation (type, validators, the headers it always sends), `plan()`
decides everything RFC 9110 decides before a byte of body is read: 304 or
412 from the preconditions, 416 or the spans from Range and If-Range, one
part or `multipart/byteranges`, the status and the exact headers. The
sender (`send.send_plan`) then only moves bytes. Like whitenoise's
responders: the plan is easy to test against a model, the send is small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .asgi import Headers
from .conditions import if_range_allows, precondition_status
from .multipart import multipart_plan, new_boundary
from .ranges import RangeNotSatisfiable, Span, content_range, parse_range
from .replies import NOSNIFF, Reply, fixed, range_not_satisfiable
from .representation import http_date

_CONDITIONAL = frozenset((b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since"))
_ARGUMENT = {name: name.decode().replace("-", "_") for name in _CONDITIONAL}


@dataclass(frozen=True, slots=True)
class Representation:
    """What the server says about one version of a resource, built once per version and reused."""

    content_type: str
    etag: str
    mtime: int
    headers: Headers  # with every 200/206: the type first, then ranges, validators, disposition, …
    validators: Headers  # with 304


def representation(
    content_type: str, etag: str, mtime: int, cache_control: str, *extra: tuple[bytes, bytes]
) -> Representation:
    """The headers of one version: its type, validators, caching, and `extra` (disposition, policy, …)."""
    validators = [
        (b"etag", etag.encode()),
        (b"last-modified", http_date(mtime).encode()),
        (b"cache-control", cache_control.encode()),
    ]
    headers = [(b"content-type", content_type.encode()), (b"accept-ranges", b"bytes"), *validators, *extra, NOSNIFF]
    return Representation(content_type, etag, mtime, headers, validators)


@dataclass(frozen=True, slots=True)
class Plan:
    """A fixed `reply`, or a status and headers with the byte spans of the body (none for HEAD and 304)."""

    status: int
    headers: Headers
    length: int = 0  # the body's Content-Length
    spans: tuple[Span, ...] = ()  # one part: its span; several: see `parts`
    parts: tuple[tuple[bytes, Span], ...] = ()  # multipart/byteranges: (part header, span) in order
    closing: bytes = b""  # multipart's closing delimiter
    body: bool = True  # False for HEAD and 304: headers only
    reply: Reply | None = None  # 412 or 416, sent as it is

    @property
    def start(self) -> dict[str, object]:
        return {"type": "http.response.start", "status": self.status, "headers": self.headers}


def plan(method: str, request: Mapping[bytes, bytes], rep: Representation, size: int, max_ranges: int) -> Plan:
    """What to answer a GET or HEAD with `request`'s headers (lower-case names) for `rep` of `size` bytes."""
    asked = request.keys() & _CONDITIONAL
    if asked:
        status = precondition_status(
            method, rep.etag, rep.mtime, **{_ARGUMENT[name]: request[name].decode("latin-1") for name in asked}
        )
        if status == 304:
            return Plan(304, rep.validators, body=False)
        if status == 412:
            return Plan(412, [], reply=fixed(412))

    spans: tuple[Span, ...] | None = None
    range_header = request.get(b"range")
    if range_header is not None and method == "GET":
        if_range = request.get(b"if-range")
        if if_range_allows(None if if_range is None else if_range.decode("latin-1"), rep.etag, rep.mtime):
            try:
                spans = parse_range(range_header.decode("latin-1"), size, max_ranges)
            except RangeNotSatisfiable:
                return Plan(416, [], reply=range_not_satisfiable(size))

    head = method == "HEAD"
    if spans is None or len(spans) == 1:
        span = spans[0] if spans else (0, size)
        length = span[1] - span[0]
        headers = [*rep.headers, (b"content-length", str(length).encode())]
        if spans:
            headers.append((b"content-range", content_range(span, size).encode()))
        return Plan(206 if spans else 200, headers, length, (span,), body=not head)
    boundary = new_boundary()
    length, parts, closing = multipart_plan(spans, size, rep.content_type, boundary)
    headers = [
        (b"content-type", f"multipart/byteranges; boundary={boundary}".encode()),
        *rep.headers[1:],
        (b"content-length", str(length).encode()),
    ]
    return Plan(206, headers, length, spans, tuple(parts), closing, body=not head)
