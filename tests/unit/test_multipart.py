"""multipart/byteranges framing: exact Content-Length and a body that parses back."""

from __future__ import annotations

import email
import re
from email import policy

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.http.multipart import multipart_plan, new_boundary
from gateway.http.ranges import coalesce, content_range


def assemble(data: bytes, parts, closing: bytes) -> bytes:
    """The body the edge sends: each part header followed by its bytes, then the close."""
    return b"".join(head + data[start:stop] for head, (start, stop) in parts) + closing


def parse_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A small strict multipart reader (RFC 2046 §5.1.1)."""
    delimiter = b"\r\n--" + boundary.encode("ascii")
    assert body.startswith(delimiter + b"\r\n"), "body must open with the first delimiter"
    assert body.endswith(delimiter + b"--\r\n"), "body must end with the close delimiter"
    chunks = body[: -len(b"--\r\n")].split(delimiter)
    assert chunks[0] == b"" and chunks[-1] == b""
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        head, sep, payload = chunk[2:].partition(b"\r\n\r\n")
        assert sep
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, colon, value = line.partition(": ")
            assert colon, f"bad header line {line!r}"
            headers[name.lower()] = value
        parts.append((headers, payload))
    return parts


@st.composite
def files_and_spans(draw):
    size = draw(st.integers(1, 3000))
    data = draw(st.binary(min_size=size, max_size=size))
    pairs = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, size)), min_size=1, max_size=8))
    spans = coalesce([(start, min(start + length, size)) for start, length in pairs])
    return data, spans


@given(files_and_spans(), st.sampled_from(["audio/mpeg", "audio/wav", "application/octet-stream"]))
@example((b"\r\n--x\r\n" * 10, ((0, 1), (5, 7), (60, 70))), "audio/mpeg")
def test_content_length_is_the_length_of_the_body(file_and_spans, part_type):
    data, spans = file_and_spans
    boundary = new_boundary()
    length, parts, closing = multipart_plan(spans, len(data), part_type, boundary)
    body = assemble(data, parts, closing)
    assert length == len(body)
    assert [span for _, span in parts] == list(spans)


@given(files_and_spans())
def test_body_parses_back_into_the_right_parts(file_and_spans):
    data, spans = file_and_spans
    boundary = new_boundary()
    _, parts, closing = multipart_plan(spans, len(data), "audio/mpeg", boundary)
    parsed = parse_parts(assemble(data, parts, closing), boundary)
    assert len(parsed) == len(spans)
    for (headers, payload), span in zip(parsed, spans):
        assert headers == {"content-type": "audio/mpeg", "content-range": content_range(span, len(data))}
        assert payload == data[span[0] : span[1]]


@given(files_and_spans())
def test_body_parses_back_with_the_email_package(file_and_spans):
    data, spans = file_and_spans
    boundary = new_boundary()
    length, parts, closing = multipart_plan(spans, len(data), "audio/wav", boundary)
    body = assemble(data, parts, closing)
    message = email.message_from_bytes(
        f"Content-Type: multipart/byteranges; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n".encode() + body,
        policy=policy.HTTP,
    )
    assert message.is_multipart()
    assert message.defects == []
    received = list(message.iter_parts())
    assert len(received) == len(spans)
    for part, (start, stop) in zip(received, spans):
        assert part.get_content_type() == "audio/wav"
        assert part["Content-Range"] == f"bytes {start}-{stop - 1}/{len(data)}"
        assert part.get_payload(decode=True) == data[start:stop]


def test_two_parts_exact_bytes():
    data = bytes(range(10))
    length, parts, closing = multipart_plan(((0, 2), (8, 10)), 10, "audio/mpeg", "B")
    body = assemble(data, parts, closing)
    assert body == (
        b"\r\n--B\r\nContent-Type: audio/mpeg\r\nContent-Range: bytes 0-1/10\r\n\r\n\x00\x01"
        b"\r\n--B\r\nContent-Type: audio/mpeg\r\nContent-Range: bytes 8-9/10\r\n\r\n\x08\x09"
        b"\r\n--B--\r\n"
    )
    assert length == len(body)


def test_boundaries_are_random_hex_tokens():
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    assert all(re.fullmatch(r"[0-9a-f]{20}", b) for b in boundaries)
