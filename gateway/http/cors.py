"""CORS (Fetch standard) for pages on other origins that embed recordings: which headers, and preflights.

A link is a bearer capability: whoever holds it may fetch it, and no
cookie or other credential plays any part. So the gateway never sends
`Access-Control-Allow-Credentials`, and `*` is a sound setting: every
answer then carries `Access-Control-Allow-Origin: *`, the same for every
origin, so it needs no `Vary`. With a list of origins, an allowed `Origin`
is echoed back, and every answer (with an `Origin` or not, allowed or not)
says `Vary: Origin`, so that no cache hands one origin's answer to
another. Other origins get no `Access-Control-*` header at all, and by
default (no origins) nothing changes.

Everything is computed once when the policy is made: per request it is one
dictionary lookup of the `Origin` header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from .asgi import Headers
from .replies import Reply

ANY = "*"
# What a page may read of an answer beyond the CORS-safelisted headers.
EXPOSED = b"Accept-Ranges, Content-Disposition, Content-Length, Content-Range, ETag, Retry-After"
METHODS = b"GET, HEAD"
# What a player sends: ranges and revalidation.
REQUEST_HEADERS = b"Range, If-Range, If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since"
MAX_AGE_SECONDS = 7200  # Chromium's own upper bound for a preflight's max age
_DEFAULT_PORTS = {"http": 80, "https": 443}
_VARY = (b"vary", b"Origin")
_EXPOSE = (b"access-control-expose-headers", EXPOSED)
_PREFLIGHT_METHODS = (b"GET", b"HEAD")
# No Content-Length: a 204 has no body to measure (RFC 9110, 8.6).
_PREFLIGHT: Reply = (
    {
        "type": "http.response.start",
        "status": 204,
        "headers": [
            (b"access-control-allow-methods", METHODS),
            (b"access-control-allow-headers", REQUEST_HEADERS),
            (b"access-control-max-age", str(MAX_AGE_SECONDS).encode()),
        ],
    },
    {"type": "http.response.body", "body": b""},
)


def parse_origin(text: str) -> str:
    """An origin as browsers serialise it (`https://crm.example.com`, `http://10.0.0.5:8080`), or `*`.

    Lower case, the default port dropped; a path, query, user or any other
    scheme is refused (ValueError), as is `null` (a sandboxed page anywhere
    sends it).
    """
    text = text.strip()
    if text == ANY:
        return ANY
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin (scheme://host[:port])") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an http(s) origin (scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{text!r} is an origin with a path: give scheme://host[:port] only")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")


class Cors:
    """The CORS policy of the edge for `origins`: (`*`,), a list of origins, or none (CORS off)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = tuple(parse_origin(origin) for origin in origins)
        self.any = ANY in self.origins
        if self.any and len(self.origins) > 1:
            raise ValueError("* stands alone: it already allows every origin")
        if self.any:
            self._default: Headers = [(b"access-control-allow-origin", b"*"), _EXPOSE]
        else:
            self._default = [_VARY] if self.origins else []
        self._allowed: dict[bytes, Headers] = {
            origin.encode(): [(b"access-control-allow-origin", origin.encode()), _EXPOSE, _VARY]
            for origin in self.origins
            if origin != ANY
        }

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def headers(self, origin: bytes | None) -> Headers:
        """What every answer to a request with this `Origin` (None: without one) carries; do not change it."""
        if origin is None:
            return self._default
        return self._allowed.get(origin, self._default)

    def preflight(self, request: Mapping[bytes, bytes]) -> Reply | None:
        """The `204` for a preflight (an `OPTIONS` with an allowed `Origin` asking for GET or HEAD), else None.

        Its `Access-Control-Allow-Origin` is `headers()`'s, added like every
        other answer's; the methods and request headers allowed are fixed, so
        the answer is the same whatever was asked, and a browser refuses a
        request it does not cover.
        """
        origin = request.get(b"origin")
        if origin is None or not (self.any or origin in self._allowed):
            return None
        if request.get(b"access-control-request-method", b"").strip().upper() not in _PREFLIGHT_METHODS:
            return None
        return _PREFLIGHT
