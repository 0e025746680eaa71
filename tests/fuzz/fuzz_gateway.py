#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of the edge's parsers: nothing escapes, nothing leaves the root.

    python tests/fuzz/fuzz_gateway.py -max_total_time=60      # a minute
    python tests/fuzz/fuzz_gateway.py -runs=20000 -seed=1     # a fixed amount (what the suite runs)

Any libFuzzer option works (`-help=1`). Each input drives one target, chosen
by its first byte:

- token decoding and path confinement: any text as a token, and tokens
  made by encrypting any path; only the documented refusals (TokenError,
  PathRefused) may be raised, a decrypted path never ends in NUL, and every
  confined path stays below a root when joined to it (checked against
  posixpath's own normalisation);
- `parse_range` against an obvious model (the set of byte offsets to send),
  plus its own guarantees (sorted, disjoint, inside the file, never larger
  than the file);
- `precondition_status` and `if_range_allows` with any header values: a
  status in {None, 304, 412}, a bool, and the RFC's decisions where the
  inputs make them certain;
- `content_disposition` with any name: one printable ASCII header value
  from which the name reads back exactly.

A failing input is written by libFuzzer as `crash-<sha1>` in the current
directory; rerun it with `python tests/fuzz/fuzz_gateway.py crash-<sha1>`.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
import sys
from urllib.parse import unquote

import atheris

# Runs from anywhere: the checkout's root first on the path (the package is normally installed too).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports():
    from gateway.http.conditions import if_range_allows, precondition_status
    from gateway.http.ranges import RangeNotSatisfiable, parse_range
    from gateway.http.representation import content_disposition
    from gateway.links.paths import PathRefused, confine
    from gateway.links.tokens import TokenError, decrypt_token, encrypt_path
    from gateway.storage.disk import entity_tag

KEYS = (bytes(range(32)), bytes(range(32, 64)))
ROOT = "/srv/recordings"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def text(fdp: atheris.FuzzedDataProvider, limit: int) -> str:
    """Fuzzed text without lone surrogates (no HTTP input or UTF-8 decryption can produce them)."""
    return _SURROGATES.sub("\ufffd", fdp.ConsumeUnicodeNoSurrogates(limit))


# -- tokens and confinement --------------------------------------------------------------------


def check_confined(path: str) -> None:
    """`confine(path)` refuses or gives a relative, normal path that stays below ROOT."""
    try:
        result = confine(path)
    except PathRefused:
        return
    assert result and not result.startswith("/"), (path, result)
    assert all(segment not in ("", ".", "..") for segment in result.split("/")), (path, result)
    assert not _CONTROL.search(result), (path, result)
    joined = posixpath.normpath(posixpath.join(ROOT, result))
    assert joined.startswith(ROOT + "/"), (path, joined)
    assert result == posixpath.normpath("/" + path).lstrip("/"), (path, result)


def fuzz_token_text(fdp: atheris.FuzzedDataProvider) -> None:
    token = text(fdp, 6000) if fdp.ConsumeBool() else fdp.ConsumeBytes(6000).decode("latin-1")
    try:
        found = decrypt_token(token, KEYS)
    except TokenError as exc:
        assert exc.reason in ("decode", "decrypt"), exc.reason
        return
    assert found, token
    for index, path in found:
        assert index in (0, 1)
        assert not path.endswith("\0")
        check_confined(path)


def fuzz_token_of_a_path(fdp: atheris.FuzzedDataProvider) -> None:
    """Tokens that decrypt (made with the key): the confinement is what stands in the way."""
    path = text(fdp, 300)
    if not path:
        return
    token = encrypt_path(path, KEYS[fdp.ConsumeIntInRange(0, 1)])
    if fdp.ConsumeBool():
        token += "=" * (-len(token) % 4)
    found = decrypt_token(token, KEYS)
    assert any(opened == path.rstrip("\0") for _, opened in found), (path, found)
    for _, opened in found:
        check_confined(opened)


# -- ranges ---------------------------------------------------------------------------------------

_MODEL_SPEC = re.compile(r"[ \t]*([0-9]*)-([0-9]*)[ \t]*")


def range_model(header: str, size: int, max_ranges: int) -> set[int] | str | None:
    """A slow, obvious RFC 9110 reading: the byte offsets to send, "416", or None (ignore the header)."""
    unit, sep, rest = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [spec for spec in rest.split(",") if spec.strip(" \t")]
    if not specs or len(specs) > max_ranges:
        return None
    offsets: set[int] = set()
    satisfiable = False
    for spec in specs:
        match = _MODEL_SPEC.fullmatch(spec)
        if not match or not (match[1] or match[2]):
            return None
        if match[1]:
            first = int(match[1])
            last = int(match[2]) if match[2] else None
            if last is not None and last < first:
                return None
            wanted = range(min(first, size), size if last is None else min(last + 1, size))
        else:
            suffix = int(match[2])
            if suffix and size == 0:
                return None  # the empty file's one satisfiable range: the whole (empty) body
            wanted = range(max(size - suffix, 0), size)
        satisfiable |= len(wanted) > 0
        offsets |= set(wanted)
    return offsets if satisfiable else "416"


def fuzz_range(fdp: atheris.FuzzedDataProvider) -> None:
    size = fdp.ConsumeIntInRange(0, 64)
    max_ranges = fdp.ConsumeIntInRange(1, 20)
    choice = fdp.ConsumeIntInRange(0, 2)
    if choice == 0:
        header = text(fdp, 200)
    elif choice == 1:
        header = fdp.ConsumeBytes(200).decode("latin-1")  # what the edge hands over: the bytes as Latin-1
    else:
        # Mostly digits, dashes, commas and blanks: the interesting part of the grammar.
        alphabet = "0123456789-, \t="
        header = "bytes=" + "".join(alphabet[b % len(alphabet)] for b in fdp.ConsumeBytes(60))
    try:
        spans = parse_range(header, size, max_ranges)
    except RangeNotSatisfiable:
        spans = "416"
    expected = range_model(header, size, max_ranges)
    if expected is None or expected == "416":
        assert spans == expected, (header, size, max_ranges, spans, expected)
        return
    assert isinstance(spans, tuple) and spans, (header, spans)
    for start, stop in spans:
        assert 0 <= start < stop <= size, (header, spans)
    ordered = sorted(spans)
    for (_, stop), (start, _) in itertools.pairwise(ordered):
        assert stop < start, (header, spans)  # disjoint and not even adjacent
    assert {i for start, stop in spans for i in range(start, stop)} == expected, (header, size, spans, expected)


# -- conditionals ---------------------------------------------------------------------------------

CONDITIONS = ("if_match", "if_none_match", "if_modified_since", "if_unmodified_since")


def fuzz_conditions(fdp: atheris.FuzzedDataProvider) -> None:
    mtime = fdp.ConsumeIntInRange(0, 2**34)
    size = fdp.ConsumeIntInRange(0, 2**40)
    etag = entity_tag(size, mtime)
    method = ["GET", "HEAD", "POST", "PUT", "DELETE"][fdp.ConsumeIntInRange(0, 4)]
    headers: dict[str, str] = {}
    for name in CONDITIONS:
        choice = fdp.ConsumeIntInRange(0, 3)
        if choice == 1:
            headers[name] = text(fdp, 120)
        elif choice == 2:
            headers[name] = etag if "match" in name else text(fdp, 40)
        elif choice == 3:
            headers[name] = "*"
    status = precondition_status(method, etag, mtime, **headers)
    assert status in (None, 304, 412), status
    # Decisions the RFC makes certain: If-Match "*" or our tag passes; If-None-Match of our tag is 304 for GET/HEAD.
    if headers.get("if_match") in ("*", etag) and headers.get("if_none_match") in ("*", etag):
        assert status == (304 if method in ("GET", "HEAD") else 412), (method, headers, status)
    if "if_match" not in headers and "if_unmodified_since" not in headers and headers.get("if_none_match") == etag:
        assert status == (304 if method in ("GET", "HEAD") else 412), (method, headers, status)
    if_range = text(fdp, 120) if fdp.ConsumeBool() else etag
    allowed = if_range_allows(if_range, etag, mtime)
    assert allowed is True or allowed is False, allowed
    if if_range == etag:
        assert allowed
    if if_range.lstrip().startswith("W/"):
        assert not allowed, if_range  # a weak tag never satisfies If-Range


# -- Content-Disposition --------------------------------------------------------------------------

_EXT = re.compile(r"filename\*=UTF-8''([A-Za-z0-9!#$&+\-.^_`|~%]*)$")
_PLAIN = re.compile(r'(attachment|inline); filename="((?:[^"\\\x00-\x1f\x7f-\xff])*)"')


def fuzz_disposition(fdp: atheris.FuzzedDataProvider) -> None:
    inline = fdp.ConsumeBool()
    name = text(fdp, 200)
    value = content_disposition(name, inline)
    assert value.isascii() and value.isprintable(), value
    plain = _PLAIN.match(value)
    assert plain and plain[1] == ("inline" if inline else "attachment"), value
    ext = _EXT.search(value)
    effective = unquote(ext[1], encoding="utf-8", errors="strict") if ext else plain[2]
    assert effective == name, (name, value)


TARGETS = (fuzz_token_text, fuzz_token_of_a_path, fuzz_range, fuzz_conditions, fuzz_disposition)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
