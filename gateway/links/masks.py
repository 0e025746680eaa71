"""Masks: the spans of a recording a link silences, in the one form every link carries.

A mask is asked in seconds (`[[10, 20], [50.5, 55]]`, the link API's
`mask`) and kept canonical: each span widened outward to whole
milliseconds (never less silence than asked), the spans sorted, and
overlapping or touching ones merged. In a link it is compact text,
seconds with at most three decimals (`mask=10-20,50.5-55`): a hundred
spans of a week-long recording take under 2 KB, well inside the edge's
8 KiB query limit. The same mask always gives the same text, so the same
signature, cache key and ETag.

Pure, and no HTTP: the API validates with `canonical`, the issuer writes
`mask_text`, the edge reads `parse_mask`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from ..transcode.spec import Mask

MAX_SPANS = 100
MAX_SECONDS = 7 * 24 * 3600  # no recording is longer; "inside the recording" is checked when it is known
MAX_TEXT_CHARS = MAX_SPANS * 2 * 12  # "604800.000" twice and separators, per span
_SECONDS = re.compile(r"(\d{1,6})(?:\.(\d{1,3}))?")


class MaskError(ValueError):
    """A mask that cannot be honoured; str() says what is wrong (the caller names the field)."""


def canonical(spans: Sequence[Sequence[float]]) -> Mask:
    """`spans` in seconds as a canonical mask in milliseconds, or MaskError naming the span at fault."""
    if len(spans) > MAX_SPANS:
        raise MaskError(f"at most {MAX_SPANS} spans, not {len(spans)}")
    widened = []
    for number, span in enumerate(spans, 1):
        if len(span) != 2:
            raise MaskError(f"span {number}: a span is [start, end] in seconds")
        start, end = span
        if not (math.isfinite(start) and math.isfinite(end)):
            raise MaskError(f"span {number}: start and end must be numbers of seconds")
        if not 0 <= start < end:
            raise MaskError(f"span {number}: [{start:g}, {end:g}] must start at 0 s or later and end after it starts")
        if end > MAX_SECONDS:
            raise MaskError(f"span {number}: ends after {MAX_SECONDS} s, later than any recording")
        # Rounded to a micro-second first, so 0.1 s is 100 ms and not 101 (0.1 * 1000 = 100.00000000000001).
        widened.append((math.floor(round(start * 1000, 3)), math.ceil(round(end * 1000, 3))))
    return _merged(widened)


def _merged(spans: Iterable[tuple[int, int]]) -> Mask:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


def _seconds(milliseconds: int) -> str:
    whole, part = divmod(milliseconds, 1000)
    return f"{whole}.{part:03d}".rstrip("0") if part else str(whole)


def mask_text(mask: Mask) -> str:
    """The form a link carries: `10-20,50.5-55`."""
    return ",".join(f"{_seconds(start)}-{_seconds(end)}" for start, end in mask)


def _milliseconds(text: str) -> int | None:
    match = _SECONDS.fullmatch(text)
    if match is None:
        return None
    return int(match[1]) * 1000 + int((match[2] or "").ljust(3, "0"))


def parse_mask(text: str) -> Mask:
    """A link's `mask` text as a canonical mask, or MaskError; bounded before any work."""
    if not text or len(text) > MAX_TEXT_CHARS:
        raise MaskError(f"expected spans like 10-20,50.5-55 (at most {MAX_SPANS})")
    parts = text.split(",")
    if len(parts) > MAX_SPANS:
        raise MaskError(f"at most {MAX_SPANS} spans, not {len(parts)}")
    spans = []
    for number, part in enumerate(parts, 1):
        start_text, dash, end_text = part.partition("-")
        start, end = _milliseconds(start_text), _milliseconds(end_text)
        if not dash or start is None or end is None:
            raise MaskError(f"span {number}: {part[:30]!r} is not start-end in seconds (at most 3 decimals)")
        if not start < end <= MAX_SECONDS * 1000:
            raise MaskError(f"span {number}: {part[:30]!r} must end after it starts, within {MAX_SECONDS} s")
        spans.append((start, end))
    return _merged(spans)
