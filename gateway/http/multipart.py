"""`multipart/byteranges` framing (RFC 9110 §14.6), computed before sending.

The whole length is known up front, so the response carries an exact
Content-Length and the client can show progress.
"""

from __future__ import annotations

import secrets

from .ranges import Span, content_range


def new_boundary() -> str:
    """A boundary no recording is likely to contain: 20 random hex digits."""
    return secrets.token_hex(10)


def multipart_plan(
    spans: tuple[Span, ...], size: int, part_type: str, boundary: str
) -> tuple[int, list[tuple[bytes, Span]], bytes]:
    """(Content-Length, [(part header, span)], closing delimiter) for the parts."""
    parts = [
        (
            f"\r\n--{boundary}\r\nContent-Type: {part_type}\r\n"
            f"Content-Range: {content_range(span, size)}\r\n\r\n".encode("latin-1"),
            span,
        )
        for span in spans
    ]
    closing = f"\r\n--{boundary}--\r\n".encode("latin-1")
    length = sum(len(head) + stop - start for head, (start, stop) in parts) + len(closing)
    return length, parts, closing
