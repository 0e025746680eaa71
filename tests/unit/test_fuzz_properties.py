"""Property tests (hypothesis) that the per-module ones leave out: any input at all.

test_tokens, test_paths, test_ranges and test_conditions check the codec,
confinement and parsers on well-formed inputs and against models; here each
gets arbitrary text (what a client can put in a URL or a header) and must
only ever answer or refuse in the documented way. The last part drives the
whole edge in process (`create_app` with its lifespan run, through
`support.asgi`) with random methods, tokens, query strings and headers over
a real directory with a secret outside it and symlinks leading out: never a
5xx, never an exception out of the app, never a byte from outside the root,
and every answer consistent (Content-Length, Content-Range, the bytes of
the file).

The atheris harness (tests/fuzz/fuzz_gateway.py) fuzzes the same functions
coverage-guided; test_fuzz_atheris.py runs it for a bounded time.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import posixpath
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from support.edge import InProcessEdge, running_edge
from support.http import parse_byteranges

from gateway.http.conditions import if_range_allows, precondition_status
from gateway.http.ranges import RangeNotSatisfiable, parse_range
from gateway.links.paths import PathRefused, confine
from gateway.links.resolver import Resolver, confined_paths
from gateway.links.tokens import TokenError, decrypt_token, encrypt_path
from gateway.storage.disk import entity_tag

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
ROOT = "/srv/recordings"

# Text a client can send: URL paths and header values (Latin-1 on the wire), and any Unicode.
wire_text = st.binary(max_size=300).map(lambda raw: raw.decode("latin-1"))
any_text = st.one_of(st.text(max_size=300), wire_text)
token_like = st.from_regex(r"[A-Za-z0-9_\-]{0,120}={0,3}", fullmatch=True)


def assert_inside(path: str) -> None:
    """A confined path: relative, normal, no controls, and below ROOT when joined to it."""
    assert path and not path.startswith("/")
    assert all(segment not in ("", ".", "..") for segment in path.split("/")), path
    assert not re.search("[\x00-\x1f\x7f-\x9f]", path), path
    assert posixpath.normpath(posixpath.join(ROOT, path)).startswith(ROOT + "/"), path


# -- the token decoder and confinement ----------------------------------------------------------


@given(st.one_of(any_text, token_like))
@example("A" * 22)
@example("A" * 22 + "==")
@example("_" * 5600)
def test_any_text_as_a_token_decodes_or_is_a_token_error(token: str) -> None:
    try:
        found = decrypt_token(token, (KEY, OTHER_KEY))
    except TokenError as exc:
        assert exc.reason in ("decode", "decrypt")
        return
    for index, path in found:
        assert index in (0, 1) and not path.endswith("\0")


@given(st.binary(min_size=16, max_size=512).map(lambda raw: raw[: len(raw) // 16 * 16]), st.booleans())
def test_any_whole_blocks_resolve_to_confined_paths_or_a_documented_refusal(raw: bytes, padded: bool) -> None:
    """Tokens of random whole AES blocks (what a guesser sends): the resolver's paths, if any,
    all stay below the root; everything else is TokenError or PathRefused."""
    token = base64.urlsafe_b64encode(raw).decode()
    token = token if padded else token.rstrip("=")
    resolver = Resolver((KEY, OTHER_KEY), ())
    try:
        candidates = resolver.candidates(token)
    except TokenError:
        return
    assert candidates
    for path in confined_paths(candidates):
        assert_inside(path)
    for candidate in candidates:
        assert (candidate.confined is None) == bool(candidate.refused)


@given(
    st.one_of(
        st.text(min_size=1, max_size=200),
        st.lists(st.sampled_from(["..", ".", "", "a", "/", "\0", "я"]), min_size=1, max_size=30).map("/".join),
    )
)
def test_the_resolver_serves_exactly_the_confined_path_of_a_token(path: str) -> None:
    """A token made with the key (as the platform or an attacker holding a link makes them):
    the resolver gives confine(path) or refuses it, nothing else."""
    if not path.rstrip("\0"):
        return
    resolver = Resolver((KEY,), ())
    try:
        expected = confine(path.rstrip("\0"))
    except PathRefused:
        assert confined_paths(resolver.candidates(encrypt_path(path, KEY))) == []
        return
    assert confined_paths(resolver.candidates(encrypt_path(path, KEY))) == [expected]
    assert_inside(expected)


# -- the Range and conditional parsers ------------------------------------------------------------


@given(any_text, st.integers(0, 10**6), st.integers(1, 32))
@example("bytes=" + "9" * 5000 + "-", 10, 5)
@example("bytes=-" + "0" * 5000, 10, 5)
@example("bytes=" + ",".join(["0-0"] * 1000), 10, 16)
def test_any_range_header_is_spans_none_or_416(header: str, size: int, max_ranges: int) -> None:
    try:
        spans = parse_range(header, size, max_ranges)
    except RangeNotSatisfiable:
        return
    if spans is None:
        return
    assert spans
    total = 0
    for start, stop in spans:
        assert 0 <= start < stop <= size
        total += stop - start
    ordered = sorted(spans)
    for (_, stop), (start, _) in itertools.pairwise(ordered):
        assert stop < start  # coalesced: disjoint, not even touching
    assert total <= size


@given(
    st.sampled_from(["GET", "HEAD", "POST", "OTHER"]),
    st.integers(0, 2**34),
    st.integers(0, 2**40),
    st.one_of(st.none(), any_text),
    st.one_of(st.none(), any_text),
    st.one_of(st.none(), any_text),
    st.one_of(st.none(), any_text),
    any_text,
)
def test_any_conditional_headers_decide_304_412_or_nothing(
    method: str,
    mtime: int,
    size: int,
    if_match: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
    if_unmodified_since: str | None,
    if_range: str,
) -> None:
    etag = entity_tag(size, mtime)
    status = precondition_status(
        method,
        etag,
        mtime,
        if_match=if_match,
        if_none_match=if_none_match,
        if_modified_since=if_modified_since,
        if_unmodified_since=if_unmodified_since,
    )
    assert status in (None, 304, 412)
    assert if_range_allows(if_range, etag, mtime) in (True, False)


# -- Range parser cases the atheris harness found (now fixed) ----------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # 22-6 is invalid (last before first): the header is ignored, the whole file sent.
        ("bytes=1-1,22-0000000000000000006", None),
        # 0…01-2 is bytes 1-2.
        ("bytes=0000000000000000001-2", ((1, 3),)),
        # Last before first, both beyond any file: invalid, ignored (not 416).
        ("bytes=20000000000000000000-10000000000000000000", None),
    ],
)
def test_range_positions_of_19_or_more_digits_are_read_exactly(header: str, expected: object) -> None:
    try:
        got: object = parse_range(header, 59, 16)
    except RangeNotSatisfiable:
        got = "416"
    assert got == expected


@pytest.mark.parametrize("header", ["bytes=\xa00-1", "bytes=0-1\x1c", "bytes=\x850-1", "bytes=\u0663-\u0664"])
def test_range_blanks_are_space_and_tab_only(header: str) -> None:
    """An invalid range-spec makes the whole header invalid: ignored, the file sent whole (README)."""
    assert parse_range(header, 10, 16) is None


# -- the whole edge, in process -------------------------------------------------------------------

SECRET = b"SECRET-OUTSIDE-" + secrets.token_hex(8).encode()
FILES = {
    "300/a.mp3": os.urandom(3000),
    "300/big.wav": os.urandom(600_000),  # over one chunk (set to 256 KiB below): streamed
    "звонок клиента.mp3": os.urandom(500),
    "empty.mp3": b"",
}


@dataclass(frozen=True)
class Site:
    root: Path
    served: dict[str, bytes]  # sha256 -> bytes of every file reachable inside the root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    base = tmp_path_factory.mktemp("fuzz-edge")
    root = base / "root"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (base / "secret").write_bytes(SECRET)
    (root / "out.mp3").symlink_to(base / "secret")
    (root / "outdir").symlink_to(base, target_is_directory=True)
    (root / "in.mp3").symlink_to(root / "300" / "a.mp3")
    served = {hashlib.sha256(data).hexdigest(): data for data in FILES.values()}
    return Site(root, served)


@pytest.fixture(scope="module")
def edge(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessEdge]:
    environ = {
        "GATEWAY_ACCESS_LOG": "false",
        "GATEWAY_CHUNK_SIZE": str(256 * 1024),
        "GATEWAY_DISK_CACHE_SECONDS": "0",
        "GATEWAY_TRANSCODE_INLINE": "false",  # (read only where transcoding exists: no ffmpeg runs here)
    }
    with running_edge(site.root, [KEY], tmp_path_factory.mktemp("fuzz-edge-work"), extra_env=environ) as running:
        yield running


SEGMENTS = [
    "300",
    "a.mp3",
    "big.wav",
    "..",
    ".",
    "",
    "out.mp3",
    "outdir",
    "secret",
    "root",
    "in.mp3",
    "звонок клиента.mp3",
    "empty.mp3",
    "\0",
    "%2e%2e",
]
REAL = ["/" + name for name in FILES] + ["/in.mp3"]
paths = st.one_of(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from([*REAL, "/out.mp3", "/outdir/secret", "/outdir/root/300/a.mp3"]),
    st.text(min_size=1, max_size=40),
)
targets = st.one_of(
    st.sampled_from(REAL).map(lambda path: "/" + encrypt_path(path, KEY)),  # files that exist: ranges, conditionals
    paths.filter(lambda path: bool(path.rstrip("\0"))).map(lambda path: "/" + encrypt_path(path, KEY)),
    st.text(max_size=80).map(lambda text: "/" + text),
    token_like.map(lambda token: "/" + token),
)
queries = st.sampled_from(
    ["", "", "inline=1", "inline=0", "x=1", "sig=abc", "exp=1&sig=abc", "filename=x.mp3", "%ff=%00"]
)
offsets = st.one_of(st.integers(0, 600), st.integers(0, 700_000))
range_specs = st.one_of(
    st.builds(lambda first, length: f"{first}-{first + length}", offsets, offsets),
    st.builds(lambda first: f"{first}-", offsets),
    st.builds(lambda suffix: f"-{suffix}", offsets),
)
ranges = st.one_of(
    range_specs.map("bytes=".__add__),
    st.builds(lambda first, last: f"bytes={first}-{last}", offsets, offsets),  # often last < first: invalid
    st.lists(range_specs, min_size=2, max_size=5).map(lambda specs: "bytes=" + ",".join(specs)),
    # Several short spans: a multipart/byteranges answer.
    st.lists(
        st.builds(lambda first, length: f"{first}-{first + length}", st.integers(0, 3000), st.integers(0, 40)),
        min_size=2,
        max_size=6,
    ).map(lambda specs: "bytes=" + ",".join(specs)),
    st.from_regex(r"bytes=[0-9, \-]{0,30}", fullmatch=True),
)
header_values = st.one_of(
    ranges,
    st.from_regex(r"(W/)?\"[0-9a-f\-]{0,20}\"", fullmatch=True),
    st.sampled_from(
        ["*", "Thu, 01 Jan 1970 00:00:00 GMT", "Fri, 17 Feb 2017 11:05:04 GMT", "Sun, 01 Jan 2090 00:00:00 GMT"]
    ),
    st.binary(max_size=60).map(lambda raw: raw.decode("latin-1")),
)
header_names = st.sampled_from(
    [
        "range",
        "range",
        "if-range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "user-agent",
    ]
)
request_headers = st.lists(st.tuples(header_names, header_values), max_size=4)
methods = st.one_of(
    st.just("GET"),
    st.just("GET"),
    st.just("HEAD"),
    st.sampled_from(["POST", "PUT", "DELETE", "OPTIONS", "PROPFIND", "get"]),
)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def check_answer(edge: InProcessEdge, site: Site, method: str, target: str, headers: list[tuple[str, str]]) -> None:
    wire = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    answer = edge.served.call(method, target, wire)
    status = answer.status
    multipart = "multipart" in answer.headers.get("content-type", "")
    event(f"{method if method in ('GET', 'HEAD') else 'other'} {status}{' multipart' if multipart else ''}")
    assert answer.complete, f"response never completed ({status})"
    assert status in (200, 206, 304, 403, 404, 405, 410, 412, 416), (status, answer.body[:200])
    assert SECRET not in answer.body
    if "content-length" in answer.headers and method != "HEAD":
        assert int(answer.headers["content-length"]) == len(answer.body), answer.headers
    if method not in ("GET", "HEAD"):
        assert status == 405 and answer.headers.get("allow") == "GET, HEAD"
        return
    if status == 200 and method == "GET":
        assert hashlib.sha256(answer.body).hexdigest() in site.served, "a 200 whose bytes are no file in the root"
    if status == 206 and multipart:
        parts = parse_byteranges(answer.headers["content-type"], answer.body)
        assert len(parts) >= 2
        for part in parts:
            match = _CONTENT_RANGE.fullmatch(part.content_range)
            assert match, part.content_range
            first, last, size = (int(group) for group in match.groups())
            assert any(len(data) == size and data[first : last + 1] == part.data for data in site.served.values())
    if status == 206 and not multipart:
        match = _CONTENT_RANGE.fullmatch(answer.headers["content-range"])
        assert match, answer.headers
        first, last, size = (int(group) for group in match.groups())
        whole = [data for data in site.served.values() if len(data) == size]
        assert any(data[first : last + 1] == answer.body for data in whole), "a 206 whose bytes are not the file's"
    if status == 416:
        assert re.fullmatch(r"bytes \*/\d+", answer.headers["content-range"])
    if status == 404:
        assert answer.body == b"Not Found\n" and "etag" not in answer.headers


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(method=methods, target=targets, query=queries, headers=request_headers)
def test_the_edge_answers_any_request_consistently(
    edge: InProcessEdge, site: Site, method: str, target: str, query: str, headers: list[tuple[str, str]]
) -> None:
    check_answer(edge, site, method, target + ("?" + query if query else ""), headers)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "HEAD"]),
    path=st.sampled_from(REAL),
    query=st.sampled_from(["", "inline=1"]),
    headers=st.one_of(st.tuples(st.just("range"), ranges).map(lambda pair: [pair]), request_headers),
)
def test_the_edge_answers_any_ranges_and_conditions_on_real_files_consistently(
    edge: InProcessEdge, site: Site, method: str, path: str, query: str, headers: list[tuple[str, str]]
) -> None:
    target = "/" + encrypt_path(path, KEY) + ("?" + query if query else "")
    check_answer(edge, site, method, target, headers)
