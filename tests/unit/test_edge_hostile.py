"""Hostile input at the edge: never a 5xx, never a byte from outside the storage root.

A file holding a unique marker lies outside the root (a sibling directory, and
the root's parent); no response body may ever contain it. Tokens here are
encrypted with the right key, so they get past the codec and test confinement
and the file checks, not just base64.

The edge runs in process (`support.edge`): an exception out of the app fails
the request, and a traceback it logs is caught from the log records. What
needs the gateway's own process (a FIFO that must not wedge a worker,
uvicorn's limit on the request line, the process's own environment, the
process alive after it all) is in e2e/test_edge_hostile_e2e.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.asgi import Answer
from support.edge import InProcessEdge
from support.keys import new_key
from support.storage import P64K, PTREE, SECRET_MARKER, Hostile, Storage

NOT_FOUND_BODY = b"Not Found\n"
URL_SAFE = string.ascii_letters + string.digits + "-_"
FORMAT = logging.Formatter("%(levelname)s %(name)s: %(message)s")  # with the traceback of a record that has one


def assert_clean(reply: Answer, edge: InProcessEdge) -> None:
    """No 5xx, no secret marker, no key material in any body."""
    assert reply.status < 500, (reply.status, reply.body[:200])
    assert SECRET_MARKER not in reply.body
    for key in edge.keys:
        assert key.hex().encode() not in reply.body


def assert_plain_404(reply: Answer, edge: InProcessEdge) -> None:
    assert_clean(reply, edge)
    assert reply.status == 404
    assert reply.body == NOT_FOUND_BODY
    assert reply.header("ETag") is None and reply.header("Content-Disposition") is None


def fetch(edge: InProcessEdge, path: str, timeout: float = 10.0) -> Answer:
    return edge.request(edge.target(path), timeout=timeout)


class LogWatch:
    """What the edge logged since this watch started (the records caplog captured, tracebacks included)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.start = len(caplog.records)

    def new(self) -> str:
        return "\n".join(FORMAT.format(record) for record in self.caplog.records[self.start :])


def assert_no_tracebacks(watch: LogWatch) -> None:
    text = watch.new()
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-3000:]


# -- paths that climb, smuggle, or name something that is not a file ------------

CLIMBING_PATHS = [
    "../secret",
    "/../outside/secret",
    "/../secret",
    "a/../../outside/secret",
    "/300/../../outside/secret",
    "/300/../../../../../../etc/passwd",
    "..%2f..",
    "..%2f..%2foutside%2fsecret",
    "/%2e%2e/outside/secret",
    "\\..\\outside\\secret",
    "..\\..\\outside\\secret",
    "///../outside/secret",
    "/./../outside/secret",
    "..",
    "/..",
    "/../",
    "/etc/passwd",
    "/proc/self/environ",
    "/dev/zero",
]
SMUGGLING_PATHS = [
    "\x00",
    "\x00" * 16,
    "/300/x.mp3\x00.txt",
    # (A trailing NUL cannot be told from the format's NUL padding, so `PTREE + "\x00"` is PTREE.)
    PTREE + "\x00x",
    PTREE + "\x00/../../outside/secret",
    "/random-64k.mp3\n",
    "/random-64k.mp3\r\nX-Injected: 1",
    "\x01",
    "\x1f",
    "\x7f",
    "/\t/random-64k.mp3",
    "\x1b[31m/random-64k.mp3",
]
NOT_A_FILE_PATHS = [
    "/",
    "//",
    "/./",
    ".",
    " ",
    "/300",
    "/300/",
    "/hostile",
    "/pad16",
    "/no/such/file.mp3",
    "/300/2017-02-17-11-05-04_in_300_uhl4.mp3/inside",
    "/" + "x" * 300,  # longer than NAME_MAX
    "/" + "/".join(["d"] * 2000),  # deep but under the 4 KiB path limit
]


@pytest.mark.parametrize("path", CLIMBING_PATHS + SMUGGLING_PATHS + NOT_A_FILE_PATHS)
def test_hostile_path_is_plain_404(edge: InProcessEdge, caplog: pytest.LogCaptureFixture, path: str) -> None:
    watch = LogWatch(caplog)
    assert_plain_404(fetch(edge, path), edge)
    assert_no_tracebacks(watch)


def test_unix_socket_in_the_root_is_404(edge: InProcessEdge, hostile: Hostile) -> None:
    """A socket is no more a servable file than a FIFO or a directory: the same plain 404
    (contract: "... directories and missing files all get the same plain 404"; bad input never
    a 5xx). open() on a socket fails with ENXIO."""
    assert_plain_404(fetch(edge, hostile.socket, timeout=5.0), edge)


# (The symlink to /proc/self/environ needs the gateway's own process: e2e/test_edge_hostile_e2e.py.)
@pytest.mark.parametrize("attribute", ["escape", "out_dir", "loop", "passwd"])
def test_symlink_leading_outside_is_404(edge: InProcessEdge, hostile: Hostile, attribute: str) -> None:
    assert_plain_404(fetch(edge, getattr(hostile, attribute)), edge)


def test_symlink_to_a_file_inside_is_served(edge: InProcessEdge, storage: Storage, hostile: Hostile) -> None:
    for path, original in ((hostile.alias, P64K), (hostile.absolute_alias, PTREE)):
        reply = fetch(edge, path)
        assert reply.status == 200
        assert reply.body == storage.data(original)
        # The link's own name is the download name.
        assert path.rpartition("/")[2] in (reply.header("Content-Disposition") or "")


def test_unreadable_file(edge: InProcessEdge, hostile: Hostile) -> None:
    reply = fetch(edge, hostile.locked)
    assert_clean(reply, edge)
    if os.geteuid() == 0:
        # root reads a mode-000 file anyway (CAP_DAC_OVERRIDE): the gateway serves it.
        assert reply.status == 200
        assert reply.body == hostile.locked_data
    else:
        assert reply.status == 404
        assert reply.body == NOT_FOUND_BODY


# -- tokens that are not tokens ----------------------------------------------------


def test_garbage_tokens_of_every_length_are_plain_404(edge: InProcessEdge, caplog: pytest.LogCaptureFixture) -> None:
    watch = LogWatch(caplog)
    rng = secrets.SystemRandom()
    for length in range(201):
        token = "".join(rng.choice(URL_SAFE) for _ in range(length))
        reply = edge.request("/" + token)
        assert (length, reply.status) == (length, 404)
        assert reply.body == NOT_FOUND_BODY
    assert_no_tracebacks(watch)


@pytest.mark.parametrize("length", [5_601, 16_000])
def test_huge_token_is_plain_404(edge: InProcessEdge, length: int) -> None:
    reply = edge.request("/" + "A" * length)
    assert_plain_404(reply, edge)


def test_huge_token_of_whole_blocks_is_plain_404(edge: InProcessEdge) -> None:
    # 5600 characters decode to 4200 bytes, not whole AES blocks; 5440 decode to 4080 = 255 blocks.
    assert_plain_404(edge.request("/" + "A" * 5440), edge)


@pytest.mark.parametrize(
    "target",
    [
        "/" + "A" * 21 + "!",
        "/" + "A" * 22 + "~",
        "/" + "AAAA+AAAA/AAAAAAAAAAAA",
        "/" + "AAAA.AAAAAAAAAAAAAAAAA",
        "/" + "A" * 11 + "=" + "A" * 10,
        "/" + "A" * 22 + "===",
        "/" + "=" * 24,
        "/" + "A" * 22 + "%20",
        "/" + "A" * 22 + "%00",
        "/%00" * 10,
        "/%ff%fe%fd" * 8,
        "/%2e%2e%2f%2e%2e%2foutside%2fsecret",
        "/%25%25%25",
        "/%zz%zz",
        "/%",
        "/%D1%82%D0%BE%D0%BA%D0%B5%D0%BD" * 3,
        "/..%2f..%2fetc%2fpasswd",
        "/" + "A" * 22 + "?" + "inline=1" * 100,
        "//" + "A" * 22,
        "/./" + "A" * 22,
        "/*",
    ],
)
def test_malformed_tokens_are_plain_404(edge: InProcessEdge, target: str) -> None:
    assert_plain_404(edge.request(target), edge)


def test_token_made_with_a_wrong_key_is_plain_404(edge: InProcessEdge) -> None:
    for path in (P64K, PTREE, "/", "../secret"):
        assert_plain_404(edge.request(edge.target(path, new_key())), edge)


@pytest.mark.parametrize("suffix", ["/", "/x", "/..", "/.", "%2F", ";x", "//"])
def test_valid_token_with_extra_path_is_plain_404(edge: InProcessEdge, suffix: str) -> None:
    assert edge.request(edge.target(PTREE)).status == 200
    assert_plain_404(edge.request(edge.target(PTREE) + suffix), edge)


def test_every_rejection_has_the_same_answer(edge: InProcessEdge, hostile: Hostile) -> None:
    """No oracle: missing, refused, undecodable, wrong key, directory, FIFO all look alike."""
    targets = [
        edge.target("/no/such.mp3"),
        edge.target("/../outside/secret"),
        edge.target("/300"),
        edge.target(hostile.fifo),
        edge.target(hostile.escape),
        edge.target(PTREE, new_key()),
        "/" + "A" * 22,
        "/not-a-token",
    ]
    answers = set()
    for target in targets:
        reply = edge.request(target)
        headers = {name.lower(): value for name, value in reply.headers.items() if name.lower() != "date"}
        answers.add((reply.status, reply.body, tuple(sorted(headers.items()))))
    assert len(answers) == 1, answers


# -- hostile header values on a good link ------------------------------------------

HOSTILE_HEADERS = [
    {"Range": "bytes=" + "9" * 5000 + "-"},
    {"Range": "bytes=0-" + "9" * 5000},
    {"Range": "bytes=-" + "9" * 5000},
    {"Range": "bytes=" + ",".join(["0-0"] * 5000)},
    {"Range": "bytes=" + "-" * 5000},
    {"Range": "bytes=" + " " * 5000 + "0-0"},
    {"If-Modified-Since": "Mon, 01 Jan 2018 00:00:00 +99999999999999"},
    {"If-Modified-Since": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"},
    {"If-Modified-Since": "Mon, 01 Jan 2018 99:99:99 GMT"},
    {"If-Modified-Since": "Mon, 01 Jan 0000 00:00:00 GMT"},
    {"If-Modified-Since": "9" * 5000},
    {"If-Unmodified-Since": "Mon, 01 Jan 2018 00:00:00 +99999999999999"},
    {"If-Range": "Mon, 01 Jan 2018 00:00:00 +99999999999999", "Range": "bytes=0-0"},
    {"If-Range": "W/", "Range": "bytes=0-0"},
    {"If-Range": '"', "Range": "bytes=0-0"},
    {"If-None-Match": '"' * 5000},
    {"If-None-Match": "W/" * 5000},
    {"If-Match": ",,,,"},
    {"If-Match": '"\xff\xfe"'},
    {"If-Range": "", "Range": "bytes=0-0"},
    {"If-None-Match": ""},
    {"If-Modified-Since": ""},
    {"If-Match": ""},
    {"If-Unmodified-Since": ""},
    {"Range": ""},
]


@pytest.mark.parametrize("headers", HOSTILE_HEADERS, ids=lambda h: repr(h)[:60])
def test_hostile_header_values_never_5xx(edge: InProcessEdge, headers: dict[str, str]) -> None:
    reply = edge.request(edge.target(P64K), headers=headers)
    assert_clean(reply, edge)
    assert reply.status in (200, 206, 304, 412, 416), (reply.status, reply.body[:100])


LATIN1_PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(
        ["Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since"]
    ),
    value=st.one_of(
        st.text(LATIN1_PRINTABLE, max_size=80),
        st.from_regex(r"bytes=[0-9 ,\-]{0,40}", fullmatch=True),
        st.from_regex(r"(W/)?\"[0-9a-f\-]{0,20}\"", fullmatch=True),
        st.from_regex(
            r"[A-Za-z]{3}, [0-9]{1,3} [A-Za-z]{3} [0-9]{1,6} [0-9:]{1,9} (GMT|[+\-][0-9]{1,6})", fullmatch=True
        ),
    ),
)
def test_random_conditional_and_range_headers_never_5xx(edge: InProcessEdge, name: str, value: str) -> None:
    headers = {name: value}
    if name == "If-Range":
        headers["Range"] = "bytes=0-0"
    reply = edge.request(edge.target(P64K), headers=headers)
    assert_clean(reply, edge)
    assert reply.status in (200, 206, 304, 412, 416)


# -- random paths with the right key -------------------------------------------------

SEGMENTS = [
    "..",
    ".",
    "",
    "outside",
    "secret",
    "300",
    "hostile",
    "escape.mp3",
    "outdir",
    "environ",
    "alias.mp3",
    "random-64k.mp3",
    "storage",
    "\x00",
    "%2e%2e",
    "\\..",
    "звонок клиента.mp3",
]


def _served_digests(root: Path) -> set[str]:
    """sha256 of every regular file reachable inside the root without leaving it."""
    digests = set()
    real_root = os.path.realpath(root)
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if not real.startswith(real_root + os.sep) or not os.path.isfile(real):
                continue
            try:
                digests.add(hashlib.sha256(Path(real).read_bytes()).hexdigest())
            except OSError:
                continue
    return digests


@pytest.fixture(scope="module")
def served_digests(storage: Storage, hostile: Hostile) -> set[str]:
    return _served_digests(storage.root)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.one_of(
        st.text(max_size=60),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8).map("/".join),
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    ).filter(bool)
)
def test_random_paths_never_5xx_and_never_leak(
    edge: InProcessEdge, hostile: Hostile, served_digests: set[str], path: str
) -> None:
    reply = fetch(edge, path, timeout=10.0)
    assert_clean(reply, edge)
    assert reply.status in (200, 404)
    if reply.status == 200:
        assert hashlib.sha256(reply.body).hexdigest() in served_digests
    else:
        assert reply.body == NOT_FOUND_BODY
