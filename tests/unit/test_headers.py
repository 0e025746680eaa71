"""Representation metadata: Content-Type, Content-Disposition (RFC 6266), ETag, dates."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.common.media import media_type
from gateway.http.representation import content_disposition, http_date
from gateway.storage.disk import entity_tag

# --- Content-Type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("call.mp3", "audio/mpeg"),
        ("call.wav", "audio/wav"),
        ("call.ogg", "audio/ogg"),
        ("call.opus", "audio/ogg"),
        ("call.m4a", "audio/mp4"),
        ("call.webm", "video/webm"),
        ("call.mp4", "video/mp4"),
        ("call.flac", "audio/flac"),
    ],
)
def test_media_types_of_recordings(name, expected):
    assert media_type(name) == expected
    assert media_type(name.upper()) == expected
    assert media_type("/300/2017-02-17/" + name[:-4] + name[-4:].upper()) == expected


@pytest.mark.parametrize(
    "name", ["call", "call.unknownext", "call.mp3.part", "300/", "README", "call.", "archive.mp3/x"]
)
def test_unknown_types_are_octet_stream(name):
    assert media_type(name) == "application/octet-stream"


def test_media_type_uses_the_last_extension_of_the_last_segment():
    assert media_type("300.wav/call.mp3") == "audio/mpeg"
    assert media_type("call.wav.mp3") == "audio/mpeg"
    assert media_type("/300/звонок.WAV") == "audio/wav"


def test_text_types_get_a_charset():
    assert media_type("notes.txt") == "text/plain; charset=utf-8"


# --- Content-Disposition -----------------------------------------------------------------

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = rf"{_TCHAR}+"
_QUOTED = r'"(?:[^"\\\x00-\x1f\x7f-\xff]|\\[\t\x20-\x7e])*"'
_PARAM = rf";[ \t]*({_TOKEN})=({_TOKEN}|{_QUOTED})[ \t]*"
_EXT_VALUE = r"UTF-8''((?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-F]{2})*)"


def parse_disposition(value: str) -> tuple[str, dict[str, str]]:
    """A strict RFC 6266 reader: the disposition type and its (unquoted) parameters."""
    match = re.fullmatch(rf"({_TOKEN})[ \t]*((?:{_PARAM})*)", value)
    assert match, f"not RFC 6266 syntax: {value!r}"
    params: dict[str, str] = {}
    for name, raw in re.findall(_PARAM, match[2]):
        assert name.lower() not in params, f"duplicate parameter {name}"
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return match[1], params


def effective_name(value: str) -> str:
    """What a current browser saves the file as: filename* wins over filename."""
    _, params = parse_disposition(value)
    if "filename*" in params:
        ext = re.fullmatch(_EXT_VALUE, params["filename*"])
        assert ext, f"bad ext-value {params['filename*']!r}"
        return unquote(ext[1], encoding="utf-8", errors="strict")
    return params["filename"]


def test_ascii_name_attachment():
    assert content_disposition("call.mp3", inline=False) == 'attachment; filename="call.mp3"'


def test_ascii_name_inline():
    assert content_disposition("call.mp3", inline=True) == 'inline; filename="call.mp3"'


@pytest.mark.parametrize(
    "name", ["2017-02-17-11-05-04_in_300_uhl4.mp3", "with space.mp3", "a;b=c,d.mp3", "(1) [2] {3}.wav", "~!@#$^&.ogg"]
)
def test_plain_ascii_names_have_no_filename_star(name):
    value = content_disposition(name, inline=False)
    assert "filename*" not in value
    assert parse_disposition(value) == ("attachment", {"filename": name})


@pytest.mark.parametrize("inline", [False, True])
def test_cyrillic_name_gets_utf8_filename_star(inline):
    name = "звонок клиента.mp3"
    value = content_disposition(name, inline=inline)
    kind, params = parse_disposition(value)
    assert kind == ("inline" if inline else "attachment")
    assert params["filename*"].startswith("UTF-8''%D0%B7%D0%B2")
    assert unquote(params["filename*"][len("UTF-8''") :]) == name
    assert params["filename"].isascii()
    assert params["filename"].endswith(".mp3")
    assert effective_name(value) == name


@pytest.mark.parametrize("name", ['a"b.mp3', "a\\b.mp3", '"\\".mp3', '\\"', 'say "hi"\\.wav', "end\\"])
def test_quotes_and_backslashes_never_break_the_quoted_string(name):
    value = content_disposition(name, inline=False)
    kind, params = parse_disposition(value)
    assert kind == "attachment"
    assert set(params) == {"filename", "filename*"}
    assert effective_name(value) == name


@pytest.mark.parametrize("name", ["x\r\nSet-Cookie: a=b.mp3", "a\nb", "a\0b", "tab\there.wav", "del\x7f.mp3"])
def test_control_characters_cannot_split_the_header(name):
    value = content_disposition(name, inline=False)
    assert value.isascii() and value.isprintable()
    assert effective_name(value) == name


@given(st.text(min_size=1, max_size=80), st.booleans())
@example("звонок.mp3", False)
@example("录音 📞.wav", True)
@example("%41.mp3", False)
def test_disposition_is_valid_ascii_and_names_the_file(name, inline):
    value = content_disposition(name, inline)
    assert value.isascii() and value.isprintable()
    kind, params = parse_disposition(value)
    assert kind == ("inline" if inline else "attachment")
    assert params["filename"].isascii()
    # `%` also gets filename*: some browsers percent-decode a plain filename.
    plain = all(" " <= c <= "~" and c not in '"\\%' for c in name)
    assert ("filename*" in params) is not plain
    assert effective_name(value) == name


# --- validators --------------------------------------------------------------------------


def test_entity_tag_is_nginx_format():
    assert entity_tag(500, 0x5F3A1B2C) == '"5f3a1b2c-1f4"'
    assert entity_tag(0, 0) == '"0-0"'


@given(st.integers(0, 2**50), st.integers(0, 2**40), st.integers(0, 2**50), st.integers(0, 2**40))
def test_entity_tag_is_strong_and_changes_with_size_and_mtime(size, mtime, size2, mtime2):
    tag = entity_tag(size, mtime)
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', tag)
    assert tag == f'"{mtime:x}-{size:x}"'
    assert (tag == entity_tag(size2, mtime2)) == ((size, mtime) == (size2, mtime2))


def test_http_date_is_imf_fixdate():
    assert http_date(1_600_000_000) == "Sun, 13 Sep 2020 12:26:40 GMT"
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@given(st.integers(0, 2**33))
def test_http_date_reads_back(seconds):
    value = http_date(seconds)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", value)
    assert int(parsedate_to_datetime(value).timestamp()) == seconds
