"""The edge section of the contract, in process: `create_app` with its lifespan run, through `support.asgi`.

The edge is built as a `storage-gateway serve` worker builds it and serves
the session's storage folder; each test asks it what a client would, and
checks the answer the app sends. What needs bytes on a real wire (HEAD and
304 send no body, keep-alive across answers, health over a socket) is in
e2e/test_edge_http_e2e.py.
"""

from __future__ import annotations

import os
import re
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote

import pytest
from support.asgi import Answer
from support.edge import InProcessEdge
from support.http import parse_byteranges
from support.keys import new_key
from support.polling import poll
from support.storage import P0, P1, P8M, P16, P32, P64K, PCYR, PSPACES, PSPECIAL, PTREE, TYPED, Storage

NOT_FOUND_BODY = b"Not Found\n"


def get(edge: InProcessEdge, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
    return edge.request(edge.target(path), method, headers)


def etag_of(storage: Storage, path: str) -> str:
    info = storage.file(path).stat()
    return f'"{int(info.st_mtime):x}-{info.st_size:x}"'


def last_modified_of(storage: Storage, path: str) -> str:
    return formatdate(int(storage.file(path).stat().st_mtime), usegmt=True)


# -- GET and HEAD ----------------------------------------------------------


@pytest.mark.parametrize("path", [P64K, P1, P0, P8M, PTREE, P16, P32])
def test_get_serves_the_file_byte_exact(edge: InProcessEdge, storage: Storage, path: str) -> None:
    reply = get(edge, path)
    assert reply.status == 200
    assert reply.header("Content-Length") == str(len(storage.data(path)))
    assert reply.body == storage.data(path)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_get_405_with_allow(edge: InProcessEdge, method: str) -> None:
    reply = get(edge, P64K, method=method)
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"
    assert reply.header("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_other_methods_get_405_even_for_unknown_tokens(edge: InProcessEdge, method: str) -> None:
    reply = edge.request("/" + "B" * 24, method)
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"


# -- ranges ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=0-0", 0, 1),
        ("bytes=100-", 100, 65536),
        ("bytes=-100", 65436, 65536),
        ("bytes=-99999999", 0, 65536),
        ("bytes=65000-99999999", 65000, 65536),
        ("bytes=65535-65535", 65535, 65536),
        ("bytes=0-99999999999999999999999", 0, 65536),
        ("Bytes=1-2", 1, 3),
        ("bytes=0-0,", 0, 1),  # RFC 9110 §5.6.1: empty list elements are accepted
    ],
)
def test_single_range(edge: InProcessEdge, storage: Storage, header: str, start: int, stop: int) -> None:
    data = storage.data(P64K)
    reply = get(edge, P64K, {"Range": header})
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {start}-{stop - 1}/{len(data)}"
    assert reply.header("Content-Length") == str(stop - start)
    assert reply.header("Content-Type") == "audio/mpeg"
    assert reply.body == data[start:stop]


def test_single_range_on_a_streamed_file(edge: InProcessEdge, storage: Storage) -> None:
    data = storage.data(P8M)
    start, stop = 3 * 1024 * 1024 + 7, 5 * 1024 * 1024 + 11
    reply = get(edge, P8M, {"Range": f"bytes={start}-{stop - 1}"})
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {start}-{stop - 1}/{len(data)}"
    assert reply.body == data[start:stop]


MIDDLE = 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("path", "header", "spans", "part_type"),
    [
        (P64K, "bytes=0-9,100-199,-6", [(0, 10), (100, 200), (65530, 65536)], "audio/mpeg"),
        (P64K, "bytes=60000-,0-0", [(60000, 65536), (0, 1)], "audio/mpeg"),
        (
            P8M,
            f"bytes=0-9,{MIDDLE}-{MIDDLE + 299_999},-6",
            [(0, 10), (MIDDLE, MIDDLE + 300_000), (8 * 1024 * 1024 - 6, 8 * 1024 * 1024)],
            "audio/ogg",
        ),
    ],
)
def test_several_ranges_are_multipart_byteranges(
    edge: InProcessEdge, storage: Storage, path: str, header: str, spans: list[tuple[int, int]], part_type: str
) -> None:
    data = storage.data(path)
    reply = get(edge, path, {"Range": header})
    assert reply.status == 206
    content_type = reply.header("Content-Type") or ""
    assert content_type.startswith("multipart/byteranges; boundary=")
    assert reply.header("Content-Range") is None
    assert reply.header("Content-Length") == str(len(reply.body))
    parts = parse_byteranges(content_type, reply.body)
    assert [(p.content_type, p.content_range) for p in parts] == [
        (part_type, f"bytes {a}-{b - 1}/{len(data)}") for a, b in spans
    ]
    assert [p.data for p in parts] == [data[a:b] for a, b in spans]


def test_sixteen_ranges_are_served(edge: InProcessEdge, storage: Storage) -> None:
    data = storage.data(P64K)
    spec = ",".join(f"{i * 1000}-{i * 1000 + 9}" for i in range(16))
    reply = get(edge, P64K, {"Range": f"bytes={spec}"})
    assert reply.status == 206
    parts = parse_byteranges(reply.header("Content-Type") or "", reply.body)
    assert [p.data for p in parts] == [data[i * 1000 : i * 1000 + 10] for i in range(16)]


def test_more_than_sixteen_ranges_are_ignored(edge: InProcessEdge, storage: Storage) -> None:
    spec = ",".join(f"{i * 1000}-{i * 1000 + 9}" for i in range(17))
    reply = get(edge, P64K, {"Range": f"bytes={spec}"})
    assert reply.status == 200
    assert reply.header("Content-Range") is None
    assert reply.body == storage.data(P64K)


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-99,50-149", 0, 150),
        ("bytes=0-9,10-19", 0, 20),  # adjacent spans merge too
        ("bytes=50-59,0-9,5-55", 0, 60),
        ("bytes=-10,65500-", 65500, 65536),
    ],
)
def test_overlapping_ranges_are_coalesced(
    edge: InProcessEdge, storage: Storage, header: str, start: int, stop: int
) -> None:
    data = storage.data(P64K)
    reply = get(edge, P64K, {"Range": header})
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {start}-{stop - 1}/{len(data)}"
    assert reply.body == data[start:stop]


def test_many_overlapping_ranges_never_exceed_the_file(edge: InProcessEdge, storage: Storage) -> None:
    data = storage.data(P64K)
    reply = get(edge, P64K, {"Range": "bytes=" + ",".join(["0-"] * 16)})
    assert reply.status == 206
    assert int(reply.header("Content-Length") or 0) <= len(data)
    assert reply.body == data


def test_multipart_parts_follow_the_request_order(edge: InProcessEdge, storage: Storage) -> None:
    """RFC 9110 §15.3.7.2: "A server that generates a multipart response SHOULD send the parts in
    the same order that the corresponding range-spec appeared in the received Range header field,
    excluding those ranges that were deemed unsatisfiable or that were coalesced into other
    ranges." nginx does; here 0-9 and 5-14 merge into one part that comes second."""
    data = storage.data(P64K)
    reply = get(edge, P64K, {"Range": "bytes=500-509,0-9,5-14"})
    parts = parse_byteranges(reply.header("Content-Type") or "", reply.body)
    assert [p.content_range for p in parts] == ["bytes 500-509/65536", "bytes 0-14/65536"]
    assert [p.data for p in parts] == [data[500:510], data[0:15]]


@pytest.mark.parametrize(
    "header", ["bytes=65536-", "bytes=65536-70000", "bytes=99999999999-", "bytes=-0", "bytes=70000-,80000-"]
)
def test_unsatisfiable_range_is_416_with_star_content_range(edge: InProcessEdge, header: str) -> None:
    reply = get(edge, P64K, {"Range": header})
    assert reply.status == 416
    assert reply.header("Content-Range") == "bytes */65536"


def test_range_on_an_empty_file_is_416(edge: InProcessEdge) -> None:
    reply = get(edge, P0, {"Range": "bytes=0-0"})
    assert reply.status == 416
    assert reply.header("Content-Range") == "bytes */0"


def test_suffix_range_on_an_empty_file_is_not_416(edge: InProcessEdge) -> None:
    """RFC 9110 §14.1.2: "When a selected representation has zero length, the only satisfiable
    form of range-spec is a suffix-range with a non-zero suffix-length." Such a range is therefore
    satisfiable and must not get 416; a 206 cannot describe zero bytes, so the answer is the
    whole (empty) representation with 200, as nginx gives."""
    reply = get(edge, P0, {"Range": "bytes=-5"})
    assert reply.status == 200
    assert reply.body == b""


@pytest.mark.parametrize(
    "header",
    [
        "bytes=abc",
        "bytes=5-3",
        "bytes=",
        "bytes=-",
        "bytes=1-2-3",
        "bytes 0-1",
        "=0-1",
        "bytes=0x10-20",
        "bytes=--1",
        "bytes=1--2",
        "bytes=,",
        "bytes=0-1;2-3",
        "bytes=0-1,abc",
        "bytes=+1-2",
        "bytes=1.5-2",
        "bytes=\u00b9-2",
    ],
)
def test_invalid_range_is_ignored(edge: InProcessEdge, storage: Storage, header: str) -> None:
    reply = get(edge, P64K, {"Range": header})
    assert reply.status == 200
    assert reply.header("Content-Range") is None
    assert reply.body == storage.data(P64K)


@pytest.mark.parametrize("header", ["items=0-1", "none", "seconds=1-2", "bits=0-7"])
def test_other_range_unit_is_ignored(edge: InProcessEdge, storage: Storage, header: str) -> None:
    reply = get(edge, P64K, {"Range": header})
    assert reply.status == 200
    assert reply.body == storage.data(P64K)


def test_range_is_ignored_on_head(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K, {"Range": "bytes=0-9"}, method="HEAD")
    assert reply.status == 200
    assert reply.header("Content-Length") == str(len(storage.data(P64K)))
    assert reply.header("Content-Range") is None


# -- validators and conditional requests -----------------------------------


def test_etag_and_last_modified_match_the_file(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K)
    assert reply.header("ETag") == etag_of(storage, P64K)
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', reply.header("ETag") or "")
    assert reply.header("Last-Modified") == last_modified_of(storage, P64K)
    assert int(parsedate_to_datetime(reply.header("Last-Modified") or "").timestamp()) == int(
        storage.file(P64K).stat().st_mtime
    )


@pytest.mark.parametrize("path", [P64K, P8M])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_gives_304_with_etag(edge: InProcessEdge, storage: Storage, path: str, method: str) -> None:
    etag = etag_of(storage, path)
    for value in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
        reply = get(edge, path, {"If-None-Match": value}, method)
        assert reply.status == 304, value
        assert reply.header("ETag") == etag
        assert reply.header("Last-Modified") == last_modified_of(storage, path)
        assert reply.body == b""


def test_if_none_match_other_tag_gives_200(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K, {"If-None-Match": '"0-0", W/"1-1"'})
    assert reply.status == 200
    assert reply.body == storage.data(P64K)


def test_if_none_match_wins_over_if_modified_since(edge: InProcessEdge, storage: Storage) -> None:
    # RFC 9110 §13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    reply = get(
        edge,
        P64K,
        {"If-None-Match": etag_of(storage, P64K), "If-Modified-Since": "Thu, 01 Jan 2015 00:00:00 GMT"},
    )
    assert reply.status == 304


def test_if_modified_since_at_or_after_last_modified_gives_304(edge: InProcessEdge, storage: Storage) -> None:
    mtime = int(storage.file(P64K).stat().st_mtime)
    for when in (mtime, mtime + 1, mtime + 86400 * 365):
        reply = get(edge, P64K, {"If-Modified-Since": formatdate(when, usegmt=True)})
        assert reply.status == 304, when
        assert reply.header("ETag") == etag_of(storage, P64K)


def test_if_modified_since_before_last_modified_gives_200(edge: InProcessEdge, storage: Storage) -> None:
    mtime = int(storage.file(P64K).stat().st_mtime)
    reply = get(edge, P64K, {"If-Modified-Since": formatdate(mtime - 1, usegmt=True)})
    assert reply.status == 200
    assert reply.body == storage.data(P64K)


def test_unparseable_if_modified_since_is_ignored(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K, {"If-Modified-Since": "yesterday"})
    assert reply.status == 200


def test_if_range_with_the_current_etag_allows_the_range(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K, {"Range": "bytes=10-19", "If-Range": etag_of(storage, P64K)})
    assert reply.status == 206
    assert reply.body == storage.data(P64K)[10:20]


def test_if_range_with_the_last_modified_date_allows_the_range(edge: InProcessEdge, storage: Storage) -> None:
    reply = get(edge, P64K, {"Range": "bytes=10-19", "If-Range": last_modified_of(storage, P64K)})
    assert reply.status == 206
    assert reply.body == storage.data(P64K)[10:20]


@pytest.mark.parametrize("if_range", ['"58a6d8e0-1"', "W/{etag}", "Thu, 01 Jan 2015 00:00:00 GMT", "garbage"])
def test_stale_if_range_sends_the_whole_file(edge: InProcessEdge, storage: Storage, if_range: str) -> None:
    value = if_range.format(etag=etag_of(storage, P64K))
    reply = get(edge, P64K, {"Range": "bytes=10-19", "If-Range": value})
    assert reply.status == 200
    assert reply.header("Content-Range") is None
    assert reply.body == storage.data(P64K)


def test_if_match_mismatch_is_412(edge: InProcessEdge) -> None:
    assert get(edge, P64K, {"If-Match": '"0-0"'}).status == 412


def test_accept_ranges_bytes(edge: InProcessEdge) -> None:
    assert get(edge, P64K).header("Accept-Ranges") == "bytes"
    assert get(edge, P8M, method="HEAD").header("Accept-Ranges") == "bytes"


# -- representation headers --------------------------------------------------


@pytest.mark.parametrize(("path", "media_type"), sorted(TYPED.items()))
def test_content_type_by_extension(edge: InProcessEdge, path: str, media_type: str) -> None:
    assert get(edge, path, method="HEAD").header("Content-Type") == media_type


def test_content_disposition_attachment_by_default(edge: InProcessEdge) -> None:
    disposition = get(edge, PTREE, method="HEAD").header("Content-Disposition")
    assert disposition == 'attachment; filename="2017-02-17-11-05-04_in_300_uhl4.mp3"'


@pytest.mark.parametrize("query", ["inline=1", "inline=true", "a=b&inline=1"])
def test_content_disposition_inline_on_request(edge: InProcessEdge, query: str) -> None:
    reply = edge.request(f"{edge.target(PTREE)}?{query}", "HEAD")
    assert reply.status == 200
    assert reply.header("Content-Disposition") == 'inline; filename="2017-02-17-11-05-04_in_300_uhl4.mp3"'


@pytest.mark.parametrize("query", ["inline=0", "inline=", "notinline=1"])
def test_inline_flag_off_keeps_attachment(edge: InProcessEdge, query: str) -> None:
    reply = edge.request(f"{edge.target(PTREE)}?{query}", "HEAD")
    assert (reply.header("Content-Disposition") or "").startswith("attachment;")


def _filename_star(disposition: str) -> str:
    match = re.search(r"filename\*=UTF-8''([^;\s]+)", disposition)
    assert match, disposition
    return unquote(match.group(1), encoding="utf-8", errors="strict")


@pytest.mark.parametrize("query", ["", "?inline=1"])
def test_cyrillic_name_survives_in_filename_star(edge: InProcessEdge, storage: Storage, query: str) -> None:
    reply = edge.request(edge.target(PCYR) + query)
    assert reply.status == 200
    assert reply.body == storage.data(PCYR)
    disposition = reply.header("Content-Disposition") or ""
    assert disposition.startswith("inline;" if query else "attachment;")
    assert _filename_star(disposition) == "звонок клиента.mp3"
    # The ASCII fallback is a quoted string of printable ASCII.
    fallback = re.search(r'filename="([^"]*)"', disposition)
    assert fallback and all(" " <= c <= "~" for c in fallback.group(1))
    # The header itself is ASCII (the app sends bytes; Answer decodes them as Latin-1, like http.client).
    disposition.encode("ascii")


@pytest.mark.parametrize("path", [PSPACES, PSPECIAL])
def test_names_with_spaces_and_reserved_characters(edge: InProcessEdge, storage: Storage, path: str) -> None:
    reply = get(edge, path)
    assert reply.status == 200
    assert reply.body == storage.data(path)
    name = path.rpartition("/")[2]
    disposition = reply.header("Content-Disposition") or ""
    fallback = re.fullmatch(r'attachment; filename="([^"]*)"(?:; filename\*=UTF-8\'\'(\S+))?', disposition)
    assert fallback, disposition
    shown = unquote(fallback.group(2)) if fallback.group(2) else fallback.group(1)
    assert shown == name


def test_cache_control_and_nosniff_on_file_responses(edge: InProcessEdge) -> None:
    for headers in ({}, {"Range": "bytes=0-1"}, {"Range": "bytes=0-1,4-5"}):
        reply = get(edge, P64K, headers)
        assert reply.status in (200, 206)
        assert reply.header("Cache-Control")
        assert reply.header("X-Content-Type-Options") == "nosniff"


def test_not_found_is_plain_and_nosniff(edge: InProcessEdge) -> None:
    reply = edge.request("/" + edge.token("/no/such/file.mp3"))
    assert reply.status == 404
    assert reply.body == NOT_FOUND_BODY
    assert (reply.header("Content-Type") or "").startswith("text/plain")
    assert reply.header("X-Content-Type-Options") == "nosniff"


# -- token forms ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "padding"), [(P16, "=="), (P32, "=")])
def test_padded_and_unpadded_tokens_serve_the_same_file(
    edge: InProcessEdge, storage: Storage, path: str, padding: str
) -> None:
    token = edge.token(path)
    assert "=" not in token and len(token) % 4 != 0
    targets = ["/" + token, "/" + token + padding, "/" + token + padding.replace("=", "%3D")]
    for target in targets:
        reply = edge.request(target)
        assert (target, reply.status) == (target, 200)
        assert reply.body == storage.data(path)


def test_link_issued_by_old_key_still_served_after_rotation(rotating_edge: InProcessEdge, storage: Storage) -> None:
    new, old = rotating_edge.keys
    for key in (new, old):
        reply = rotating_edge.request(rotating_edge.target(PTREE, key))
        assert reply.status == 200
        assert reply.body == storage.data(PTREE)


def test_rotation_gateway_refuses_a_third_key(rotating_edge: InProcessEdge) -> None:
    reply = rotating_edge.request(rotating_edge.target(PTREE, new_key()))
    assert reply.status == 404
    assert reply.body == NOT_FOUND_BODY


def test_file_changed_on_disk_gets_new_validators(edge: InProcessEdge, storage: Storage) -> None:
    """A changed file is served with its new bytes and new validators (the disk backend may keep a
    small file for about a second, like nginx's open_file_cache, so poll for the change)."""
    path = "/mutable/changing.mp3"
    target = storage.add(path, b"first version")
    os.utime(target, (1_500_000_000, 1_500_000_000))
    first = get(edge, path)
    target.write_bytes(b"second version, longer")
    os.utime(target, (1_600_000_000, 1_600_000_000))
    second = poll(lambda: get(edge, path), lambda answer: answer.body != b"first version", timeout=10.0)
    assert first.body == b"first version"
    assert second.body == b"second version, longer"
    assert second.header("Content-Length") == "22"
    assert first.header("ETag") != second.header("ETag")
    assert second.header("ETag") == etag_of(storage, path)
    assert get(edge, path, {"If-None-Match": first.header("ETag") or ""}).status == 200
