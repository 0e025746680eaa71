"""Conditional requests (RFC 9110 §13) as pure functions of validators.

The edge passes header values and the file's validators in; these decide
304, 412 or whether If-Range lets a Range through. Our entity tags are
strong (they change with size and modification time), as nginx's are.
"""

from __future__ import annotations

import re
from datetime import UTC
from email.utils import parsedate_to_datetime

_ETAG = re.compile(r'(W/)?"([^"]*)"')


def http_date_seconds(value: str) -> int | None:
    """Seconds since the epoch for an HTTP date, or None if it is not one."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # asctime dates carry no zone; RFC 9110 §5.6.7 says they are UTC.
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _tags(header: str) -> list[tuple[bool, str]]:
    return [(bool(weak), opaque) for weak, opaque in _ETAG.findall(header)]


def _opaque(etag: str) -> str:
    return etag.removeprefix("W/").strip('"')


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    ours = _opaque(etag)
    return any(opaque == ours and (weak or not is_weak) for is_weak, opaque in _tags(header))


def precondition_status(
    method: str,
    etag: str,
    mtime: int,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
) -> int | None:
    """304 or 412 when a precondition decides the answer, else None.

    Evaluated in the order of RFC 9110 §13.2.2: If-Match, then
    If-Unmodified-Since (only without If-Match), then If-None-Match, then
    If-Modified-Since (only without If-None-Match, and only for GET/HEAD).
    Unparseable dates are ignored, as the RFC requires.
    """
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            return 412
    elif if_unmodified_since is not None:
        since = http_date_seconds(if_unmodified_since)
        if since is not None and mtime > since:
            return 412
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            return 304 if method in ("GET", "HEAD") else 412
    elif if_modified_since is not None and method in ("GET", "HEAD"):
        since = http_date_seconds(if_modified_since)
        if since is not None and mtime <= since:
            return 304
    return None


def if_range_allows(if_range: str | None, etag: str, mtime: int) -> bool:
    """Whether a Range may be honoured given If-Range (absent: always).

    An entity tag must match strongly; a date must equal Last-Modified
    exactly. Anything else means the client's partial copy is stale, so the
    whole representation is sent.
    """
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and _opaque(value) == _opaque(etag)
    return http_date_seconds(value) == mtime
