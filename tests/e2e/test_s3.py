"""The S3 backend against a real S3 endpoint (moto in server mode, its own process).

One moto and one bucket for the module; the gateway serves
`file:///<disk>,s3://recordings/archive`: recent recordings on disk, older
ones in S3 under a prefix, the link never changing. Every answer is checked
against the bytes and the validators S3 itself reports (head_object), not
against the gateway's own code.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from support.http import Reply, download_sha256, parse_byteranges, request
from support.keys import new_key
from support.polling import poll
from support.proc import bytes_read
from support.processes import Gateway, running_gateway
from support.s3 import MotoServer, gateway_s3_env, key_for, random_bytes, running_moto, s3_client, sha256, storage_urls
from support.storage import MIB, file_url

BUCKET = "recordings"
PREFIX = "archive"

# Storage paths, as they appear inside link tokens.
S3_TREE = "/300/2017-02-17-11-05-04_in_300_uhl4.mp3"  # S3 only
S3_BIG = "/300/big-20m.ogg"  # S3 only, 20 MiB
S3_CYRILLIC = "/звонок клиента.mp3"  # non-ASCII and a space in the key
S3_ODD = "/odd ?#&%+= name.mp3"  # characters with a meaning in URLs
S3_EMPTY = "/empty.mp3"
S3_PARTS = "/parts/multi.wav"  # read by one test only: moto's log counts its GETs
S3_REPLACED = "/replaced/v.mp3"
DISK_ONLY = "/recent/today.mp3"
BOTH = "/both/x.mp3"  # different bytes on disk and in S3: the disk tier comes first
NOWHERE = "/missing/nowhere.mp3"
UNPREFIXED = "/outside-prefix.mp3"  # exists in the bucket, but not under the prefix
SIZE = 40_000  # of S3_TREE
RFC8187_ATTR_CHAR = "!#$&+-.^_`|~"  # besides letters and digits: what stands unescaped in filename*


@dataclass
class Archive:
    """What the module put where: S3 objects (with S3's own validators) and disk files."""

    root: Path
    moto: MotoServer
    s3: Any
    objects: dict[str, bytes] = field(default_factory=dict)
    disk: dict[str, bytes] = field(default_factory=dict)

    def put(self, path: str, data: bytes, prefix: str = PREFIX) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key_for(prefix, path), Body=data)
        if prefix == PREFIX:
            self.objects[path] = data

    def add_disk(self, path: str, data: bytes) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.disk[path] = data

    def head(self, path: str) -> dict[str, Any]:
        return self.s3.head_object(Bucket=BUCKET, Key=key_for(PREFIX, path))

    def etag(self, path: str) -> str:
        return str(self.head(path)["ETag"])

    def last_modified(self, path: str) -> str:
        return format_datetime(self.head(path)["LastModified"].astimezone(UTC), usegmt=True)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def archive(moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Archive:
    s3 = s3_client(moto.endpoint_url)
    s3.create_bucket(Bucket=BUCKET)
    result = Archive(root=tmp_path_factory.mktemp("disk-tier"), moto=moto, s3=s3)
    result.put(S3_TREE, random_bytes(SIZE))
    result.put(S3_BIG, random_bytes(20 * MIB))
    result.put(S3_CYRILLIC, random_bytes(3000))
    result.put(S3_ODD, random_bytes(1000))
    result.put(S3_EMPTY, b"")
    result.put(S3_PARTS, random_bytes(SIZE))
    result.put(S3_REPLACED, b"first version")
    result.put(BOTH, b"the archived copy in S3")
    result.put(UNPREFIXED, b"not under the prefix", prefix="")
    result.add_disk(DISK_ONLY, random_bytes(5000))
    result.add_disk(BOTH, b"the recent copy on disk")
    return result


@pytest.fixture(scope="module")
def s3_gateway(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Disk first, then S3 under the prefix; streaming (no redirect)."""
    with running_gateway(
        archive.root,
        [new_key()],
        tmp_path_factory.mktemp("s3-gateway"),
        extra_env=gateway_s3_env(archive.moto),
        storage_url=storage_urls(file_url(archive.root), f"s3://{BUCKET}/{PREFIX}"),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def redirect_gateway(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """S3 only, in redirect mode: a 302 to a presigned URL valid for 300 s."""
    with running_gateway(
        archive.root,
        [new_key()],
        tmp_path_factory.mktemp("redirect-gateway"),
        extra_env=gateway_s3_env(archive.moto),
        storage_url=f"s3://{BUCKET}/{PREFIX}?redirect=true&redirect_expires=300",
    ) as running:
        yield running


def get(gateway: Gateway, path: str, headers: Mapping[str, str] | None = None, method: str = "GET") -> Reply:
    return request(gateway.base_url, gateway.target(path), method=method, headers=headers)


# -- whole objects -------------------------------------------------------------


def test_full_get_serves_the_object_with_s3s_own_validators(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, S3_TREE)
    assert reply.status == 200
    assert reply.body == archive.objects[S3_TREE]
    assert reply.header("Content-Length") == str(SIZE)
    assert reply.header("Content-Type") == "audio/mpeg"
    assert reply.header("Accept-Ranges") == "bytes"
    assert reply.header("ETag") == archive.etag(S3_TREE)
    assert reply.header("Last-Modified") == archive.last_modified(S3_TREE)
    assert reply.header("Content-Disposition") == 'attachment; filename="2017-02-17-11-05-04_in_300_uhl4.mp3"'
    assert reply.header("Content-Range") is None


def test_head_has_the_headers_of_get_and_no_body(s3_gateway: Gateway) -> None:
    got = get(s3_gateway, S3_TREE)
    head = get(s3_gateway, S3_TREE, method="HEAD")
    assert head.status == 200
    assert head.body == b""
    for name in ("Content-Length", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges", "Content-Disposition"):
        assert head.header(name) == got.header(name), name


def test_20_mib_object_is_byte_exact(s3_gateway: Gateway, archive: Archive) -> None:
    status, length, received, digest = download_sha256(s3_gateway, S3_BIG)
    assert (status, length, received) == (200, 20 * MIB, 20 * MIB)
    assert digest == sha256(archive.objects[S3_BIG])


def test_empty_object(s3_gateway: Gateway) -> None:
    reply = get(s3_gateway, S3_EMPTY)
    assert (reply.status, reply.header("Content-Length"), reply.body) == (200, "0", b"")
    ranged = get(s3_gateway, S3_EMPTY, {"Range": "bytes=0-"})
    assert (ranged.status, ranged.header("Content-Range")) == (416, "bytes */0")


@pytest.mark.parametrize("path", [S3_CYRILLIC, S3_ODD], ids=["cyrillic", "url-characters"])
def test_keys_with_non_ascii_and_url_characters(s3_gateway: Gateway, archive: Archive, path: str) -> None:
    reply = get(s3_gateway, path)
    assert reply.status == 200
    assert reply.body == archive.objects[path]
    assert reply.header("ETag") == archive.etag(path)
    name = path.rpartition("/")[2]
    assert reply.header("Content-Disposition").endswith(f"; filename*=UTF-8''{quote(name, safe=RFC8187_ATTR_CHAR)}")


def test_replaced_object_is_never_spliced_and_is_served_fresh_next(s3_gateway: Gateway, archive: Archive) -> None:
    """Lookups are remembered for s3.cache_seconds. An object replaced in that window is
    caught by the GET's If-Match: that one request fails cleanly (502, before any byte),
    the lookup is forgotten, and the next request serves the new bytes and ETag."""
    before = get(s3_gateway, S3_REPLACED)
    assert (before.status, before.body) == (200, b"first version")
    archive.put(S3_REPLACED, b"second, longer version")
    caught = get(s3_gateway, S3_REPLACED)
    assert (caught.status, caught.body) == (502, b"Bad Gateway\n")
    after = get(s3_gateway, S3_REPLACED)
    assert (after.status, after.body) == (200, b"second, longer version")
    assert after.header("ETag") == archive.etag(S3_REPLACED) != before.header("ETag")


# -- ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "start", "stop"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=0-0", 0, 1),
        ("bytes=39999-39999", 39999, 40000),
        ("bytes=12345-", 12345, SIZE),
        ("bytes=-500", SIZE - 500, SIZE),
        ("bytes=39990-50000", 39990, SIZE),  # the end is clamped to the size
        ("bytes=-50000", 0, SIZE),  # a suffix longer than the object is all of it
    ],
)
def test_single_range(s3_gateway: Gateway, archive: Archive, range_header: str, start: int, stop: int) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": range_header})
    assert reply.status == 206
    assert reply.header("Content-Range") == f"bytes {start}-{stop - 1}/{SIZE}"
    assert reply.header("Content-Length") == str(stop - start)
    assert reply.header("ETag") == archive.etag(S3_TREE)
    assert reply.body == archive.objects[S3_TREE][start:stop]


def test_several_ranges_are_multipart_with_one_ranged_get_per_part(s3_gateway: Gateway, archive: Archive) -> None:
    data = archive.objects[S3_PARTS]
    offset = archive.moto.log_size()
    reply = get(s3_gateway, S3_PARTS, {"Range": "bytes=0-9,20000-20999,-100"})
    assert reply.status == 206
    parts = parse_byteranges(reply.header("Content-Type"), reply.body)
    assert [(part.content_range, part.data) for part in parts] == [
        (f"bytes 0-9/{SIZE}", data[0:10]),
        (f"bytes 20000-20999/{SIZE}", data[20000:21000]),
        (f"bytes {SIZE - 100}-{SIZE - 1}/{SIZE}", data[SIZE - 100 :]),
    ]
    assert all(part.content_type == "audio/wav" for part in parts)
    assert reply.header("Content-Length") == str(len(reply.body))
    # Each part was its own ranged GET to S3 (moto answers a range with 206).
    key = key_for(PREFIX, S3_PARTS)
    gets = poll(lambda: archive.moto.requests_since(offset, "GET", key), lambda found: len(found) >= 3, timeout=5.0)
    assert gets == [206, 206, 206]


def test_range_deep_in_a_large_object_is_fetched_from_s3_as_a_range(s3_gateway: Gateway, archive: Archive) -> None:
    """The gateway reads about the range from S3, not the whole object (rchar counts socket reads too)."""
    data = archive.objects[S3_BIG]
    before = bytes_read(s3_gateway.pid)
    status, _, received, _ = download_sha256(s3_gateway, S3_BIG)
    whole = bytes_read(s3_gateway.pid) - before
    assert (status, received) == (200, 20 * MIB)
    assert whole >= 20 * MIB  # the measure sees S3 traffic at all
    offset = 13 * MIB + 4321
    before = bytes_read(s3_gateway.pid)
    reply = get(s3_gateway, S3_BIG, {"Range": f"bytes={offset}-{offset + 65535}"})
    ranged = bytes_read(s3_gateway.pid) - before
    assert reply.status == 206
    assert reply.body == data[offset : offset + 65536]
    assert ranged < 2 * MIB, f"a 64 KiB range read {ranged} bytes"


def test_unsatisfiable_range_is_416_with_the_size(s3_gateway: Gateway) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": f"bytes={SIZE}-"})
    assert reply.status == 416
    assert reply.header("Content-Range") == f"bytes */{SIZE}"


@pytest.mark.parametrize("range_header", ["bytes=abc", "pages=1-2", "bytes=5-1"])
def test_invalid_range_is_ignored(s3_gateway: Gateway, archive: Archive, range_header: str) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": range_header})
    assert reply.status == 200
    assert reply.body == archive.objects[S3_TREE]


# -- conditional requests ------------------------------------------------------------


def _conditional_headers(archive: Archive, case: str) -> dict[str, str]:
    etag, modified = archive.etag(S3_TREE), archive.last_modified(S3_TREE)
    long_ago = "Sat, 01 Jan 2000 00:00:00 GMT"
    return {
        "inm-match": {"If-None-Match": etag},
        "inm-list": {"If-None-Match": f'"nope", {etag}'},
        "inm-star": {"If-None-Match": "*"},
        "inm-other": {"If-None-Match": '"nope"'},
        "ims-equal": {"If-Modified-Since": modified},
        "ims-old": {"If-Modified-Since": long_ago},
        "im-match": {"If-Match": etag},
        "im-other": {"If-Match": '"nope"'},
        "ius-old": {"If-Unmodified-Since": long_ago},
        "ius-equal": {"If-Unmodified-Since": modified},
    }[case]


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("inm-match", 304),
        ("inm-list", 304),
        ("inm-star", 304),
        ("inm-other", 200),
        ("ims-equal", 304),
        ("ims-old", 200),
        ("im-match", 200),
        ("im-other", 412),
        ("ius-old", 412),
        ("ius-equal", 200),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_conditional_request(s3_gateway: Gateway, archive: Archive, case: str, status: int, method: str) -> None:
    reply = get(s3_gateway, S3_TREE, _conditional_headers(archive, case), method=method)
    assert reply.status == status
    if status == 304:
        assert reply.body == b""
        assert reply.header("ETag") == archive.etag(S3_TREE)
        assert reply.header("Last-Modified") == archive.last_modified(S3_TREE)
    elif status == 200:
        assert reply.body == (archive.objects[S3_TREE] if method == "GET" else b"")


def test_if_range_with_the_current_etag_gives_the_range(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": "bytes=100-199", "If-Range": archive.etag(S3_TREE)})
    assert reply.status == 206
    assert reply.body == archive.objects[S3_TREE][100:200]


def test_if_range_with_a_stale_etag_gives_the_whole_object(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": "bytes=100-199", "If-Range": '"stale"'})
    assert reply.status == 200
    assert reply.body == archive.objects[S3_TREE]


def test_if_range_with_the_last_modified_date_gives_the_range(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, S3_TREE, {"Range": "bytes=100-199", "If-Range": archive.last_modified(S3_TREE)})
    assert reply.status == 206
    assert reply.body == archive.objects[S3_TREE][100:200]


# -- tiers: disk first, then S3 under the prefix --------------------------------------


def test_file_on_both_tiers_comes_from_disk(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, BOTH)
    assert (reply.status, reply.body) == (200, archive.disk[BOTH])
    assert reply.header("ETag") != archive.etag(BOTH)


def test_file_missing_on_disk_comes_from_s3(s3_gateway: Gateway, archive: Archive) -> None:
    assert not (archive.root / S3_TREE.lstrip("/")).exists()
    reply = get(s3_gateway, S3_TREE)
    assert (reply.status, reply.body) == (200, archive.objects[S3_TREE])
    assert reply.header("ETag") == archive.etag(S3_TREE)


def test_file_only_on_disk_is_served(s3_gateway: Gateway, archive: Archive) -> None:
    reply = get(s3_gateway, DISK_ONLY)
    assert (reply.status, reply.body) == (200, archive.disk[DISK_ONLY])


def test_file_on_neither_tier_is_the_plain_404(s3_gateway: Gateway) -> None:
    reply = get(s3_gateway, NOWHERE)
    assert (reply.status, reply.body) == (404, b"Not Found\n")
    assert reply.header("ETag") is None


def test_prefix_is_part_of_every_key(s3_gateway: Gateway, archive: Archive) -> None:
    """`/outside-prefix.mp3` exists at the bucket's root, but links name `archive/…` only."""
    assert archive.s3.head_object(Bucket=BUCKET, Key=key_for("", UNPREFIXED))["ContentLength"] > 0
    reply = get(s3_gateway, UNPREFIXED)
    assert (reply.status, reply.body) == (404, b"Not Found\n")


def test_path_is_normalised_before_it_becomes_a_key(s3_gateway: Gateway, archive: Archive) -> None:
    winding = "/x/..//300/./" + S3_TREE.rpartition("/")[2]
    reply = get(s3_gateway, winding)
    assert (reply.status, reply.body) == (200, archive.objects[S3_TREE])
    climbing = get(s3_gateway, "/../" + PREFIX + "/" + S3_TREE.lstrip("/"))
    assert (climbing.status, climbing.body) == (404, b"Not Found\n")


# -- readiness ---------------------------------------------------------------------


def test_readyz_reports_each_storage(s3_gateway: Gateway) -> None:
    reply = request(s3_gateway.base_url, "/readyz")
    assert (reply.status, reply.body) == (200, b"disk: ok\ns3: ok\n")


def test_readyz_checks_s3_at_most_once_per_few_seconds(s3_gateway: Gateway, archive: Archive) -> None:
    """Probes are frequent (every replica, every few seconds): the S3 check behind them is cached."""
    offset = archive.moto.log_size()
    for _ in range(10):
        assert request(s3_gateway.base_url, "/readyz").status == 200
    check = f'"HEAD /{BUCKET} HTTP/1.1" 200'
    assert check in archive.moto.log_since(0)  # the probe does reach S3 (the pattern is right)
    checks = archive.moto.log_since(offset).count(check)
    assert checks <= 2, f"{checks} bucket checks for 10 probes"


def test_readyz_reports_a_missing_bucket(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> None:
    storages = storage_urls(file_url(archive.root), f"s3://{BUCKET}/{PREFIX}", "s3://no-such-bucket/x")
    with running_gateway(
        archive.root,
        [new_key()],
        tmp_path_factory.mktemp("missing-bucket"),
        extra_env=gateway_s3_env(archive.moto),
        storage_url=storages,
    ) as gateway:
        reply = request(gateway.base_url, "/readyz")
        # Each storage is reported in order; a remote one alone does not fail readiness.
        assert reply.body.decode().splitlines() == ["disk: ok", "s3: ok", "s3: unavailable"]
        assert reply.status == 200
        # The healthy tiers still serve.
        assert get(gateway, S3_TREE).body == archive.objects[S3_TREE]


# -- redirect mode -------------------------------------------------------------------


def follow(location: str) -> Reply:
    """GET the presigned URL exactly as the gateway wrote it."""
    parts = urlsplit(location)
    assert parts.scheme == "http"
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", location[len(f"{parts.scheme}://{parts.netloc}") :])
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def presigned_query(location: str) -> dict[str, str]:
    query = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values()), query
    return {name: values[0] for name, values in query.items()}


def test_redirect_is_a_302_to_the_object_on_the_s3_endpoint(redirect_gateway: Gateway, archive: Archive) -> None:
    reply = get(redirect_gateway, S3_TREE)
    assert reply.status == 302
    assert reply.body == b""
    assert reply.header("Cache-Control") == "no-store"
    location = reply.header("Location")
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == archive.moto.endpoint_url
    assert parts.path == "/" + quote(f"{BUCKET}/{key_for(PREFIX, S3_TREE)}")


def test_following_the_redirect_gives_the_bytes(redirect_gateway: Gateway, archive: Archive) -> None:
    location = get(redirect_gateway, S3_TREE).header("Location")
    answer = follow(location)
    assert answer.status == 200
    assert answer.body == archive.objects[S3_TREE]
    assert answer.header("ETag") == archive.etag(S3_TREE)


def test_following_the_redirect_of_a_20_mib_object_is_byte_exact(redirect_gateway: Gateway, archive: Archive) -> None:
    answer = follow(get(redirect_gateway, S3_BIG).header("Location"))
    assert answer.status == 200
    assert sha256(answer.body) == sha256(archive.objects[S3_BIG])


def test_presigned_url_sets_the_type_and_disposition_the_edge_would_send(
    redirect_gateway: Gateway, s3_gateway: Gateway
) -> None:
    """moto 5.2.1 ignores response-content-type/-disposition (it answers with the stored
    type and no Content-Disposition), so the overrides are checked in the URL: they must be
    exactly the headers the streaming edge sends for the same file. Real S3 applies them."""
    for path, params in [(S3_TREE, ""), (S3_CYRILLIC, ""), (S3_TREE, "?inline=1")]:
        streamed = request(s3_gateway.base_url, s3_gateway.target(path) + params, method="HEAD")
        redirected = request(redirect_gateway.base_url, redirect_gateway.target(path) + params)
        assert redirected.status == 302
        query = presigned_query(redirected.header("Location"))
        assert query["response-content-type"] == streamed.header("Content-Type")
        assert query["response-content-disposition"] == streamed.header("Content-Disposition")
    inline = presigned_query(
        request(redirect_gateway.base_url, redirect_gateway.target(S3_TREE) + "?inline=1").header("Location")
    )
    assert inline["response-content-disposition"].startswith("inline;")
    cyrillic = presigned_query(get(redirect_gateway, S3_CYRILLIC).header("Location"))
    assert "filename*=UTF-8''%D0%B7%D0%B2%D0%BE%D0%BD%D0%BE%D0%BA%20" in cyrillic["response-content-disposition"]


def test_presigned_url_expires_after_the_configured_time(redirect_gateway: Gateway) -> None:
    before = time.time()
    query = presigned_query(get(redirect_gateway, S3_TREE).header("Location"))
    after = time.time()
    if "X-Amz-Expires" in query:  # SigV4
        assert query["X-Amz-Expires"] == "300"
    else:  # SigV2: an absolute time
        assert before + 300 - 2 <= int(query["Expires"]) <= after + 300 + 2


def test_redirect_of_a_non_ascii_key_reaches_the_object(redirect_gateway: Gateway, archive: Archive) -> None:
    answer = follow(get(redirect_gateway, S3_CYRILLIC).header("Location"))
    assert (answer.status, answer.body) == (200, archive.objects[S3_CYRILLIC])


def test_redirect_mode_head_is_also_a_redirect(redirect_gateway: Gateway) -> None:
    reply = get(redirect_gateway, S3_TREE, method="HEAD")
    assert reply.status == 302
    assert urlsplit(reply.header("Location")).path.endswith(quote(S3_TREE.rpartition("/")[2]))


def test_redirect_mode_missing_key_is_the_plain_404(redirect_gateway: Gateway) -> None:
    reply = get(redirect_gateway, NOWHERE)
    assert (reply.status, reply.body) == (404, b"Not Found\n")
    assert reply.header("Location") is None
