"""Fixed answers, built once at import and sent as two messages.

Every refusal of a link gets the same small plain-text body whatever the
reason, so a response is no oracle for what exists.
"""

from __future__ import annotations

from .asgi import Message, Send

NOSNIFF = (b"x-content-type-options", b"nosniff")
RETRY_AFTER_SECONDS = 5
Reply = tuple[Message, Message]


def plain(status: int, text: str, *extra: tuple[bytes, bytes]) -> Reply:
    """A small text answer."""
    body = f"{text}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        NOSNIFF,
        *extra,
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


_RETRY = (b"retry-after", str(RETRY_AFTER_SECONDS).encode())
METHOD_NOT_ALLOWED = plain(405, "Method Not Allowed", (b"allow", b"GET, HEAD"))
_FIXED = {
    403: plain(403, "Forbidden"),
    404: plain(404, "Not Found"),
    410: plain(410, "Gone"),
    412: plain(412, "Precondition Failed"),
    414: plain(414, "URI Too Long"),
    502: plain(502, "Bad Gateway"),
    503: plain(503, "Service Unavailable", _RETRY),
    504: plain(504, "Gateway Timeout"),
}


def fixed(status: int) -> Reply:
    """The one answer for `status` (403, 404, 410, 412, 414, 502, 503, 504), identical for every reason."""
    return _FIXED[status]


def explained(status: int, message: str, retry_after: int | None = None) -> Reply:
    """An answer whose body says what to change (400, 415, 503 for a rendition): the link itself was good."""
    return plain(status, message, *([(b"retry-after", str(retry_after).encode())] if retry_after else []))


def range_not_satisfiable(size: int) -> Reply:
    return plain(416, "Range Not Satisfiable", (b"content-range", f"bytes */{size}".encode()))


async def send_reply(send: Send, reply: Reply) -> None:
    await send(reply[0])
    await send(reply[1])
