"""The edge's fixed answers, built once at import and sent as two messages.

Every refusal of a link gets the same small plain-text body whatever the
reason, so a response is no oracle for what exists.
"""

from __future__ import annotations

from .asgi import Message, Send
from .storage import DEFAULT_FAILURE_STATUS, FAILURE_STATUS, StorageUnavailable

NOSNIFF = (b"x-content-type-options", b"nosniff")
Reply = tuple[Message, Message]


def plain(status: int, text: str, *extra: tuple[bytes, bytes]) -> Reply:
    """A small fixed text answer."""
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


METHOD_NOT_ALLOWED = plain(405, "Method Not Allowed", (b"allow", b"GET, HEAD"))
PRECONDITION_FAILED = plain(412, "Precondition Failed")
REFUSALS = {404: plain(404, "Not Found"), 403: plain(403, "Forbidden"), 410: plain(410, "Gone")}
_STORAGE_FAILURES = {
    502: plain(502, "Bad Gateway"),
    503: plain(503, "Service Unavailable", (b"retry-after", b"5")),
    504: plain(504, "Gateway Timeout"),
}


def range_not_satisfiable(size: int) -> Reply:
    return plain(416, "Range Not Satisfiable", (b"content-range", f"bytes */{size}".encode()))


def storage_failure(exc: StorageUnavailable) -> Reply:
    """504 when the store was too slow, 503 when unreachable, 502 when it answered wrongly."""
    return _STORAGE_FAILURES[FAILURE_STATUS.get(exc.kind, DEFAULT_FAILURE_STATUS)]


async def send_reply(send: Send, reply: Reply) -> None:
    await send(reply[0])
    await send(reply[1])
