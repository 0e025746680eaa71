"""Lexical confinement of decrypted paths below the storage root."""

from __future__ import annotations

import os
import posixpath
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.links.paths import MAX_PATH_BYTES, PathRefused, confine

TRAVERSALS = [
    "..",
    "../",
    "/..",
    "/../",
    "/../etc/passwd",
    "../etc/passwd",
    "/300/../../etc/passwd",
    "a/../../b",
    "./..",
    "/./../x",
    ".././..",
    "a/./../..",
    "a/b/../../..",
    "a/b/../../../c",
    "/a/b/../..",  # trailing /.. back to the root itself
    "/300/..",
    "//..//..//etc//passwd",
    "///../",
    "..//",
    "/..///x",
    "/./././..",
    "300/x.mp3/../../..",
    "/" + "a/" * 50 + "../" * 51 + "etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_refused(path):
    with pytest.raises(PathRefused):
        confine(path)


@pytest.mark.parametrize("path", ["", "/", "//", "///", ".", "./", "/.", "/./.", "a/..", "/a/b/../../", "./a/.."])
def test_the_root_itself_is_refused(path):
    with pytest.raises(PathRefused):
        confine(path)


@pytest.mark.parametrize(
    "path",
    [
        "\0",
        "a\0b",
        "/300/x.mp3\0.txt",
        "/300/x.mp3\0",
        "\n",
        "/300/x\n.mp3",
        "/300/x\r\nSet-Cookie: a=b",
        "\t",
        "/300/\x1b[31mred.mp3",
        "\x01",
        "\x1f",
        "\x7f",
        "/300/x\x7f.mp3",
    ],
)
def test_nul_and_ascii_control_characters_are_refused(path):
    with pytest.raises(PathRefused):
        confine(path)


@pytest.mark.parametrize(
    "path",
    [
        "/300/\x85x.mp3",  # NEL: a line break to str.splitlines() and many log readers
        "/300/\x9b31mred.mp3",  # CSI: starts a terminal escape sequence in 8-bit terminals
        "/300/\x80.mp3",
        "/300/\x9f.mp3",
    ],
)
def test_c1_control_characters_are_refused(path):
    # Unicode category Cc is C0, DEL *and* C1 (U+0080..U+009F); all are control characters.
    assert unicodedata.category(path[5]) == "Cc"
    with pytest.raises(PathRefused):
        confine(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/../b", "b"),
        ("/300/x.mp3", "300/x.mp3"),
        ("300/x.mp3", "300/x.mp3"),
        ("///300//x.mp3", "300/x.mp3"),
        ("./300/./x.mp3", "300/x.mp3"),
        ("/300/x.mp3/", "300/x.mp3"),
        ("/300/sub/../x.mp3", "300/x.mp3"),
        ("/a/b/c/../../d", "a/d"),
        ("....//x", "..../x"),  # "...." is an ordinary file name
        ("/.../x", ".../x"),
        ("/..a/b..", "..a/b.."),
        ("/.hidden", ".hidden"),
        # Tokens are not URL-decoded after decryption: percent signs are literal characters.
        ("/%2e%2e/%2e%2e/etc/passwd", "%2e%2e/%2e%2e/etc/passwd"),
        ("..%2f..%2fetc%2fpasswd", "..%2f..%2fetc%2fpasswd"),
        ("%2E%2E", "%2E%2E"),
        # Backslash is an ordinary character in a POSIX name.
        ("..\\..\\etc\\passwd", "..\\..\\etc\\passwd"),
        ("/300/звонок клиента.mp3", "300/звонок клиента.mp3"),
        ("/录音/📞.wav", "录音/📞.wav"),
    ],
)
def test_allowed_paths_are_normalised(path, expected):
    assert confine(path) == expected


def test_length_limit_counts_utf8_bytes():
    assert confine("a" * MAX_PATH_BYTES) == "a" * MAX_PATH_BYTES
    with pytest.raises(PathRefused):
        confine("a" * (MAX_PATH_BYTES + 1))
    with pytest.raises(PathRefused):
        confine("я" * (MAX_PATH_BYTES // 2 + 1))  # 2049 characters, 4098 bytes


def test_refusal_reason_is_path():
    with pytest.raises(PathRefused) as caught:
        confine("/../x")
    assert caught.value.reason == "path"
    assert isinstance(caught.value, ValueError)


# --- properties ------------------------------------------------------------------------------

# Path-like text: mostly slashes, dots and names, with some control characters mixed in.
_pieces = st.sampled_from(["/", "/", ".", "..", "./", "../", "/..", "a", "bc", "я", "%2e", "\\", "\0", "\x1f", "\x7f"])
path_like = st.lists(_pieces, max_size=20).map("".join)
any_path = st.one_of(path_like, st.text(max_size=60))


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


@given(any_path)
@example("a/../b")
@example("/..")
@example("")
def test_confined_paths_are_relative_normal_and_stay_under_the_root(path):
    try:
        result = confine(path)
    except PathRefused:
        return
    segments = result.split("/")
    assert not result.startswith("/")
    assert all(segment not in ("", ".", "..") for segment in segments)
    assert not any(char in result for char in "\0\n\r\x7f")
    root = "/srv/recordings"
    joined = os.path.normpath(os.path.join(root, result))
    assert joined.startswith(root + os.sep)
    assert os.path.commonpath([root, joined]) == root
    # Lexical normalisation agrees with posixpath for every path it accepts.
    assert result == posixpath.normpath("/" + path).lstrip("/")
    assert confine(result) == result


@given(any_path)
def test_confined_paths_have_no_control_characters(path):
    try:
        result = confine(path)
    except PathRefused:
        return
    assert not any(_is_control(char) for char in result), repr(result)


@given(st.lists(st.sampled_from(["a", "b", "звонок", "x.mp3", ".", ""]), min_size=1, max_size=10))
def test_paths_without_dot_dot_are_refused_only_when_empty(segments):
    path = "/".join(segments)
    names = [s for s in segments if s not in ("", ".")]
    if names:
        assert confine(path) == "/".join(names)
    else:
        with pytest.raises(PathRefused):
            confine(path)
