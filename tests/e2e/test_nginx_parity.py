"""The gateway answers like nginx serving the same folder, header for header and byte for byte.

The same request goes to the gateway (by token) and to a real nginx (by
/files/<path>) configured as the gateway imitates it (`etag on`,
`if_modified_since before`, `max_ranges 16`). Where the gateway deliberately
answers otherwise, the cases are not skipped here: `test_known_difference`
sends each of them to nginx too, asserts what nginx really does, and asserts
the gateway's own (RFC 9110) answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import pytest
from support.http import Reply, boundary_of, parse_byteranges, request
from support.processes import Gateway, Nginx
from support.storage import P0, P1, P8M, P64K, PCYR, PSPACES, PSPECIAL, TYPED, Storage

PARITY_FILES = {"64k": P64K, "1b": P1, "8m": P8M}


@dataclass(frozen=True)
class Facts:
    size: int
    mtime: int
    etag: str

    def date(self, offset: int = 0) -> str:
        return formatdate(self.mtime + offset, usegmt=True)


def facts(storage: Storage, path: str) -> Facts:
    info = storage.file(path).stat()
    return Facts(info.st_size, int(info.st_mtime), f'"{int(info.st_mtime):x}-{info.st_size:x}"')


HeaderSet = Callable[[Facts], dict[str, str]]


def spaced(count: int) -> str:
    return ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(count))


# (id, method, headers as a function of the file, files it applies to: None = all)
CASES: list[tuple[str, str, HeaderSet, tuple[str, ...] | None]] = [
    ("plain", "GET", lambda f: {}, None),
    ("head", "HEAD", lambda f: {}, None),
    ("first-byte", "GET", lambda f: {"Range": "bytes=0-0"}, None),
    ("open-100", "GET", lambda f: {"Range": "bytes=100-"}, None),
    ("suffix-100", "GET", lambda f: {"Range": "bytes=-100"}, None),
    ("suffix-longer-than-file", "GET", lambda f: {"Range": "bytes=-99999999"}, None),
    ("past-end", "GET", lambda f: {"Range": "bytes=0-99999999"}, None),
    ("last-byte", "GET", lambda f: {"Range": f"bytes={f.size - 1}-{f.size - 1}"}, None),
    ("two-ranges", "GET", lambda f: {"Range": "bytes=0-1,5-9"}, None),
    ("two-ranges-spaces", "GET", lambda f: {"Range": "bytes=0-1, 5-9"}, None),
    ("two-ranges-one-beyond", "GET", lambda f: {"Range": f"bytes=0-1,5-9,{f.size + 10}-{f.size + 20}"}, None),
    ("unit-case", "GET", lambda f: {"Range": "Bytes=0-0"}, None),
    ("sixteen-ranges", "GET", lambda f: {"Range": "bytes=" + spaced(16)}, None),
    # With one byte only the first of 17 specs is satisfiable: see test_known_difference.
    ("seventeen-ranges", "GET", lambda f: {"Range": "bytes=" + spaced(17)}, ("64k", "8m")),
    ("out-of-order", "GET", lambda f: {"Range": "bytes=5-9,0-1"}, ("64k", "8m")),
    ("at-size-416", "GET", lambda f: {"Range": f"bytes={f.size}-"}, None),
    ("zero-suffix-416", "GET", lambda f: {"Range": "bytes=-0"}, None),
    ("other-unit", "GET", lambda f: {"Range": "items=0-1"}, None),
    ("no-equals", "GET", lambda f: {"Range": "bytes"}, None),
    ("inm-match", "GET", lambda f: {"If-None-Match": f.etag}, None),
    ("inm-match-head", "HEAD", lambda f: {"If-None-Match": f.etag}, None),
    ("inm-weak-match", "GET", lambda f: {"If-None-Match": "W/" + f.etag}, None),
    ("inm-list", "GET", lambda f: {"If-None-Match": f'"a-1", {f.etag}'}, None),
    ("inm-star", "GET", lambda f: {"If-None-Match": "*"}, None),
    ("inm-other", "GET", lambda f: {"If-None-Match": '"0-0"'}, None),
    ("inm-match-with-range", "GET", lambda f: {"If-None-Match": f.etag, "Range": "bytes=0-0"}, None),
    ("inm-other-with-range", "GET", lambda f: {"If-None-Match": '"0-0"', "Range": "bytes=0-0"}, None),
    ("ims-at", "GET", lambda f: {"If-Modified-Since": f.date()}, None),
    ("ims-after", "GET", lambda f: {"If-Modified-Since": f.date(3600)}, None),
    ("ims-before", "GET", lambda f: {"If-Modified-Since": f.date(-1)}, None),
    ("ims-at-head", "HEAD", lambda f: {"If-Modified-Since": f.date()}, None),
    ("ims-garbage", "GET", lambda f: {"If-Modified-Since": "not a date"}, None),
    ("ims-before-with-range", "GET", lambda f: {"If-Modified-Since": f.date(-1), "Range": "bytes=0-0"}, None),
    ("inm-other-ims-after", "GET", lambda f: {"If-None-Match": '"0-0"', "If-Modified-Since": f.date(3600)}, None),
    ("if-range-etag", "GET", lambda f: {"If-Range": f.etag, "Range": "bytes=0-0"}, None),
    ("if-range-other-etag", "GET", lambda f: {"If-Range": '"0-0"', "Range": "bytes=0-0"}, None),
    ("if-range-weak-etag", "GET", lambda f: {"If-Range": "W/" + f.etag, "Range": "bytes=0-0"}, None),
    ("if-range-date", "GET", lambda f: {"If-Range": f.date(), "Range": "bytes=0-0"}, None),
    ("if-range-other-date", "GET", lambda f: {"If-Range": f.date(-60), "Range": "bytes=0-0"}, None),
    ("if-range-etag-multi", "GET", lambda f: {"If-Range": f.etag, "Range": "bytes=0-1,5-9"}, None),
    ("if-range-other-416", "GET", lambda f: {"If-Range": '"0-0"', "Range": f"bytes={f.size}-"}, None),
    ("if-match-other-412", "GET", lambda f: {"If-Match": '"0-0"'}, None),
    ("if-match-same", "GET", lambda f: {"If-Match": f.etag}, None),
    ("ius-before-412", "GET", lambda f: {"If-Unmodified-Since": f.date(-1)}, None),
    ("ius-at", "GET", lambda f: {"If-Unmodified-Since": f.date()}, None),
]


def _params() -> list[Any]:
    """pytest.param sets: one per case and file it applies to."""
    params: list[Any] = []
    for case_id, method, build, only in CASES:
        for file_id, path in PARITY_FILES.items():
            if only is None or file_id in only:
                params.append(pytest.param(method, build, path, id=f"{case_id}-{file_id}"))
    return params


def both(
    gateway: Gateway, nginx: Nginx, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[Reply, Reply]:
    ours = request(gateway.base_url, gateway.target(path), method, headers)
    theirs = request(nginx.base_url, nginx.target(path), method, headers)
    return ours, theirs


def compare(ours: Reply, theirs: Reply, method: str) -> None:
    assert ours.status == theirs.status
    status = ours.status
    if status in (412, 416):
        # Error answers: nginx sends its HTML error page, the gateway a short text; the
        # protocol fields must agree.
        assert ours.header("Content-Range") == theirs.header("Content-Range")
        return
    for name in ("ETag", "Last-Modified", "Content-Range"):
        assert (name, ours.header(name)) == (name, theirs.header(name))
    if status == 304:
        for name in ("Content-Length", "Content-Type", "Accept-Ranges"):
            assert (name, ours.header(name)) == (name, theirs.header(name))
        assert ours.body == theirs.body == b""
        return
    if status == 200:
        # nginx sends Accept-Ranges on 200 only; on 206 see test_known_difference.
        assert ours.header("Accept-Ranges") == theirs.header("Accept-Ranges") == "bytes"
    ours_type, theirs_type = ours.header("Content-Type") or "", theirs.header("Content-Type") or ""
    if theirs_type.startswith("multipart/byteranges"):
        assert ours_type.startswith("multipart/byteranges; boundary=")
        ours_parts = parse_byteranges(ours_type, ours.body)
        theirs_parts = parse_byteranges(theirs_type, theirs.body)
        assert ours_parts == theirs_parts
        # Same framing apart from the boundary: the lengths agree once each delimiter's
        # boundary is taken out (there is one delimiter per part, plus the closing one).
        delimiters = len(ours_parts) + 1
        ours_frame = int(ours.header("Content-Length") or -1) - delimiters * len(boundary_of(ours_type))
        theirs_frame = int(theirs.header("Content-Length") or -1) - delimiters * len(boundary_of(theirs_type))
        assert ours_frame == theirs_frame
        assert int(ours.header("Content-Length") or -1) == len(ours.body)
        return
    assert ours_type == theirs_type
    assert ours.header("Content-Length") == theirs.header("Content-Length")
    if method == "HEAD":
        assert ours.body == theirs.body == b""
    else:
        assert ours.body == theirs.body


@pytest.mark.parametrize(("method", "build", "path"), _params())
def test_parity_with_nginx(
    gateway: Gateway, nginx: Nginx, storage: Storage, method: str, build: HeaderSet, path: str
) -> None:
    headers = build(facts(storage, path))
    ours, theirs = both(gateway, nginx, path, headers, method)
    compare(ours, theirs, method)


def test_parity_covers_success_partial_multipart_not_modified_and_errors(
    gateway: Gateway, nginx: Nginx, storage: Storage
) -> None:
    """The table above exercises every kind of nginx answer, not just 200s."""
    seen: set[tuple[int, bool]] = set()
    for _, method, build, _only in CASES:
        _, theirs = both(gateway, nginx, P64K, build(facts(storage, P64K)), method)
        seen.add((theirs.status, (theirs.header("Content-Type") or "").startswith("multipart/")))
    assert {(200, False), (206, False), (206, True), (304, False), (412, False), (416, False)} <= seen


@pytest.mark.parametrize(("path", "media_type"), sorted(TYPED.items()))
def test_content_type_parity(gateway: Gateway, nginx: Nginx, path: str, media_type: str) -> None:
    ours, theirs = both(gateway, nginx, path, {}, "HEAD")
    assert ours.header("Content-Type") == theirs.header("Content-Type") == media_type


@pytest.mark.parametrize("path", [PCYR, PSPECIAL, PSPACES])
def test_odd_names_parity(gateway: Gateway, nginx: Nginx, path: str) -> None:
    ours, theirs = both(gateway, nginx, path, {"Range": "bytes=10-20"})
    compare(ours, theirs, "GET")
    assert ours.status == 206


# -- where the gateway deliberately differs -------------------------------------


@dataclass(frozen=True)
class Difference:
    why: str
    path: str
    method: str
    headers: Callable[[Facts], dict[str, str]]
    nginx: Callable[[Reply, Facts], bool]  # what nginx really answers (checked, so the list stays true)
    gateway: Callable[[Reply, Facts], bool]  # the gateway's answer


def _whole(reply: Reply, f: Facts) -> bool:
    return (
        reply.status == 200 and reply.header("Content-Length") == str(f.size) and reply.header("Content-Range") is None
    )


def _parts(reply: Reply) -> list[str]:
    return [part.content_range for part in parse_byteranges(reply.header("Content-Type") or "", reply.body)]


DIFFERENCES = {
    # RFC 9110 §14.2: "A server MUST ignore a Range header field received with a request method
    # that is unrecognized or for which range handling is not defined" — range handling is
    # defined for GET only. nginx answers a HEAD with Range as 206 with a Content-Range.
    "range-on-head": Difference(
        "RFC 9110 §14.2",
        P64K,
        "HEAD",
        lambda f: {"Range": "bytes=0-0"},
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-0/{f.size}",
        lambda r, f: _whole(r, f) and r.body == b"",
    ),
    # RFC 9110 §14.1.1: a byte-range-spec whose last-pos is below its first-pos is invalid, and
    # an invalid Range is ignored (200). nginx answers 416.
    "reversed-range": Difference(
        "RFC 9110 §14.1.1",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=5-3"},
        lambda r, f: r.status == 416,
        _whole,
    ),
    # Not a range-set at all: ignored by the gateway (RFC 9110 §14.2), 416 from nginx.
    "garbage-range": Difference(
        "RFC 9110 §14.2",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=abc"},
        lambda r, f: r.status == 416,
        _whole,
    ),
    # RFC 9110 §5.6.1: a recipient MUST accept empty list elements, so `0-0,` is the range 0-0.
    # nginx answers 416.
    "empty-list-element": Difference(
        "RFC 9110 §5.6.1",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-0,"},
        lambda r, f: r.status == 416,
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-0/{f.size}",
    ),
    # RFC 9110 §14.1.1: a last-pos at or past the end means "to the end", whatever its size.
    # nginx overflows its off_t parser and answers 416.
    "huge-last-pos": Difference(
        "RFC 9110 §14.1.1",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-99999999999999999999999"},
        lambda r, f: r.status == 416,
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-{f.size - 1}/{f.size}",
    ),
    # RFC 9110 §15.3.7.2: a server MAY coalesce overlapping ranges. When the overlapping ranges
    # add up to more than the file, nginx ignores the whole header (200); the gateway merges them.
    "overlap-larger-than-file": Difference(
        "RFC 9110 §15.3.7.2",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-40000,30000-"},
        _whole,
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-{f.size - 1}/{f.size}",
    ),
    "overlap-one-byte-file": Difference(
        "RFC 9110 §15.3.7.2",
        P1,
        "GET",
        lambda f: {"Range": "bytes=0-0,-1"},
        _whole,
        lambda r, f: r.status == 206 and r.header("Content-Range") == "bytes 0-0/1",
    ),
    # Overlapping ranges smaller than the file: nginx sends both, overlapping, as multipart
    # (the same bytes twice); the gateway sends the merged span as a single part.
    "overlap-smaller-than-file": Difference(
        "RFC 9110 §15.3.7.2",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-9,5-14"},
        lambda r, f: r.status == 206 and _parts(r) == [f"bytes 0-9/{f.size}", f"bytes 5-14/{f.size}"],
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-14/{f.size}",
    ),
    # Adjacent ranges: a gap of zero bytes is "smaller than the overhead of sending multiple
    # parts" (RFC 9110 §15.3.7.2), so the gateway merges them; nginx sends two parts.
    "adjacent-ranges": Difference(
        "RFC 9110 §15.3.7.2",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-1,2-3"},
        lambda r, f: r.status == 206 and _parts(r) == [f"bytes 0-1/{f.size}", f"bytes 2-3/{f.size}"],
        lambda r, f: r.status == 206 and r.header("Content-Range") == f"bytes 0-3/{f.size}",
    ),
    # RFC 9110 §13.2.2 / §13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    # nginx evaluates both and serves 200 because the date is older than Last-Modified.
    "inm-beats-ims": Difference(
        "RFC 9110 §13.1.3",
        P64K,
        "GET",
        lambda f: {"If-None-Match": f.etag, "If-Modified-Since": f.date(-86400)},
        _whole,
        lambda r, f: r.status == 304 and r.header("ETag") == f.etag,
    ),
    # RFC 9110 §14.1.2: on a zero-length representation an int-range is never satisfiable, so
    # `bytes=0-0` is 416 with `bytes */0`. nginx serves the empty file with 200.
    "empty-file-range": Difference(
        "RFC 9110 §14.1.2",
        P0,
        "GET",
        lambda f: {"Range": "bytes=0-0"},
        _whole,
        lambda r, f: r.status == 416 and r.header("Content-Range") == "bytes */0",
    ),
    # RFC 9110 §14.3: a server MAY send Accept-Ranges in any response. nginx omits it on 206;
    # the gateway sends the same representation headers on 200 and 206.
    "accept-ranges-on-206": Difference(
        "RFC 9110 §14.3",
        P64K,
        "GET",
        lambda f: {"Range": "bytes=0-0"},
        lambda r, f: r.status == 206 and r.header("Accept-Ranges") is None,
        lambda r, f: r.status == 206 and r.header("Accept-Ranges") == "bytes",
    ),
    # Not an RFC rule, an implementation choice (RFC 9110 §14.2 lets a server ignore Range):
    # the gateway's limit of 16 counts range-specs as written, nginx's `max_ranges` counts only
    # the satisfiable ones. On a one-byte file only the first of 17 specs is satisfiable.
    "max-ranges-counts-specs": Difference(
        "implementation choice",
        P1,
        "GET",
        lambda f: {"Range": "bytes=" + spaced(17)},
        lambda r, f: r.status == 206 and r.header("Content-Range") == "bytes 0-0/1",
        _whole,
    ),
}


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_known_difference(gateway: Gateway, nginx: Nginx, storage: Storage, name: str) -> None:
    case = DIFFERENCES[name]
    f = facts(storage, case.path)
    ours, theirs = both(gateway, nginx, case.path, case.headers(f), case.method)
    assert case.nginx(theirs, f), f"nginx no longer answers as documented: {theirs.status} {dict(theirs.headers)}"
    assert case.gateway(ours, f), f"gateway answer: {ours.status} {dict(ours.headers)}"
