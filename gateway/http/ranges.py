"""The Range header (RFC 9110 §14), as pure functions over a representation size.

Knows nothing of files or HTTP messages: it turns a header value and a size
into the byte spans to send, so it can be tested against a simple model.
"""

from __future__ import annotations

import re

Span = tuple[int, int]
"""A half-open byte span [start, stop)."""

# HTTP's blanks are space and tab only, its digits ASCII only (not \s and \d, which
# admit NBSP, NEL, the file separators and every script's digits).
_SPEC = re.compile(r"[ \t]*([0-9]*)-([0-9]*)[ \t]*")
_BLANKS = " \t"
# Positions beyond any real file; also keeps int() away from 4300-digit strings.
_HUGE = 2**63


def _magnitude(digits: str) -> tuple[int, str]:
    """A key that orders digit strings exactly as the numbers they spell, at any length."""
    significant = digits.lstrip("0") or "0"
    return len(significant), significant


def _position(digits: str) -> int:
    length, significant = _magnitude(digits)
    return int(significant) if length < 19 else _HUGE


class RangeNotSatisfiable(Exception):
    """No requested range overlaps the representation: answer 416."""


def parse_range(header: str, size: int, max_ranges: int) -> tuple[Span, ...] | None:
    """The spans to send for `Range: header`, or None to send the whole body.

    None covers every case RFC 9110 lets a server ignore the field: a unit
    other than bytes, a syntactically invalid set, and (as nginx's
    `max_ranges`) more ranges than we are willing to serve. Overlapping and
    adjacent spans are coalesced, so a request cannot make the response
    larger than the file.
    """
    unit, sep, range_set = header.partition("=")
    if not sep or unit.strip(_BLANKS).lower() != "bytes":
        return None
    specs = [spec for spec in range_set.split(",") if spec.strip(_BLANKS)]
    if not specs or len(specs) > max_ranges:
        return None
    spans: list[Span] = []
    for spec in specs:
        match = _SPEC.fullmatch(spec)
        if match is None:
            return None
        first, last = match.groups()
        if first:
            if last and _magnitude(last) < _magnitude(first):
                return None
            start = _position(first)
            if start >= size:
                continue
            stop = min(_position(last) + 1, size) if last else size
        elif last:
            suffix = _position(last)
            if suffix == 0:
                continue
            if size == 0:
                # The one satisfiable range of an empty file (RFC 9110 §14.1.2): send it whole.
                return None
            start, stop = max(size - suffix, 0), size
        else:
            return None
        spans.append((start, stop))
    if not spans:
        raise RangeNotSatisfiable
    return coalesce(spans)


def coalesce(spans: list[Span]) -> tuple[Span, ...]:
    """Merge overlapping and touching spans, keeping the order of the request.

    RFC 9110 §15.3.7.2: parts SHOULD follow the order of the range-specs,
    a coalesced part standing where the first of its specs stood.
    """
    parts: list[Span] = []
    for start, stop in spans:
        kept: list[Span] = []
        position: int | None = None
        for other_start, other_stop in parts:
            if other_start <= stop and start <= other_stop:
                start, stop = min(start, other_start), max(stop, other_stop)
                position = len(kept) if position is None else position
            else:
                kept.append((other_start, other_stop))
        kept.insert(len(kept) if position is None else position, (start, stop))
        parts = kept
    return tuple(parts)


def content_range(span: Span, size: int) -> str:
    """The `Content-Range` value for one span (inclusive end, as on the wire)."""
    return f"bytes {span[0]}-{span[1] - 1}/{size}"
