"""Conditional requests (RFC 9110 §13) as pure functions of the validators."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.http.conditions import http_date_seconds, if_range_allows, precondition_status
from gateway.storage.disk import entity_tag

MTIME = 1_600_000_000  # Sun, 13 Sep 2020 12:26:40 GMT
SIZE = 12345
ETAG = entity_tag(SIZE, MTIME)  # '"5f5e1000-3039"'
OPAQUE = ETAG.strip('"')
WEAK = f"W/{ETAG}"
OTHER = '"5f5e1000-303a"'


def date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def status(method: str = "GET", **headers: str) -> int | None:
    return precondition_status(method, ETAG, MTIME, **headers)


def test_reference_values():
    assert ETAG == '"5f5e1000-3039"'
    assert date(MTIME) == "Sun, 13 Sep 2020 12:26:40 GMT"


def test_no_conditions_means_no_decision():
    assert status() is None
    assert status("HEAD") is None


# --- If-None-Match -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "header",
    [ETAG, "*", WEAK, f'"a", {ETAG}', f'{OTHER}, W/"x", {WEAK}', f"  {ETAG}  ", f'"a",{ETAG},"b"'],
)
def test_if_none_match_hit_is_304_for_get_and_head(method, header):
    assert status(method, if_none_match=header) == 304


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("header", [OTHER, f"W/{OTHER}", '"a", "b"', OPAQUE, '""', f'"{OPAQUE}x"', "garbage"])
def test_if_none_match_miss_decides_nothing(method, header):
    assert status(method, if_none_match=header) is None


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE"])
def test_if_none_match_hit_is_412_for_other_methods(method):
    assert status(method, if_none_match=ETAG) == 412
    assert status(method, if_none_match="*") == 412


def test_if_none_match_takes_precedence_over_if_modified_since():
    # A miss on the tag means "changed", whatever the date says.
    assert status(if_none_match=OTHER, if_modified_since=date(MTIME + 3600)) is None
    # A hit on the tag means "not modified", whatever the date says.
    assert status(if_none_match=ETAG, if_modified_since=date(MTIME - 3600)) == 304


# --- If-Modified-Since ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("since", "expected"),
    [(MTIME, 304), (MTIME + 1, 304), (MTIME + 86400 * 365, 304), (MTIME - 1, None), (0, None)],
)
def test_if_modified_since(method, since, expected):
    assert status(method, if_modified_since=date(since)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        "yesterday",
        "Sun, 32 Sep 2020 12:26:40 GMT",
        "Sun, 13 Sep 2020 25:26:40 GMT",
        "Sun, 13 Foo 2020 12:26:40 GMT",
        "Sun, 13 Sep 99999 12:26:40 GMT",
        "1600000000",
        "Sun, 13 Sep 2020 12:26:40 +9999",
        "\x00",
    ],
)
def test_invalid_dates_are_ignored(value):
    assert http_date_seconds(value) is None
    assert status(if_modified_since=value) is None
    assert status(if_unmodified_since=value) is None
    assert if_range_allows(value, ETAG, MTIME) is False


def test_if_modified_since_is_only_for_get_and_head():
    assert status("PUT", if_modified_since=date(MTIME + 10)) is None


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 13 Sep 2020 12:26:40 GMT",  # IMF-fixdate
        "Sunday, 13-Sep-20 12:26:40 GMT",  # obsolete RFC 850 format
        "Sun Sep 13 12:26:40 2020",  # obsolete asctime() format
    ],
    ids=["imf-fixdate", "rfc850", "asctime"],
)
def test_all_three_http_date_formats_are_read(value):
    # RFC 9110 §5.6.7: "A recipient that parses a timestamp value in an HTTP field MUST
    # accept all three HTTP-date formats." asctime() carries no zone: it is GMT.
    assert http_date_seconds(value) == MTIME
    assert status(if_modified_since=value) == 304
    assert if_range_allows(value, ETAG, MTIME) is True


@given(st.integers(0, 2**33), st.integers(0, 2**33))
def test_if_modified_since_model(mtime, since):
    etag = entity_tag(SIZE, mtime)
    got = precondition_status("GET", etag, mtime, if_modified_since=date(since))
    assert got == (304 if mtime <= since else None)


# --- If-Match and If-Unmodified-Since ------------------------------------------------------------


@pytest.mark.parametrize("header", [ETAG, "*", f'"a", {ETAG}', f"{OTHER}, {ETAG}"])
def test_if_match_hit_passes(header):
    assert status(if_match=header) is None


@pytest.mark.parametrize("header", [OTHER, WEAK, f"W/{OTHER}", '"a", "b"', OPAQUE, '""'])
def test_if_match_miss_is_412(header):
    # If-Match uses the strong comparison: a weak tag never matches.
    assert status(if_match=header) == 412
    assert status("HEAD", if_match=header) == 412


@pytest.mark.parametrize(
    ("since", "expected"),
    [(MTIME - 1, 412), (0, 412), (MTIME, None), (MTIME + 1, None)],
)
def test_if_unmodified_since(since, expected):
    assert status(if_unmodified_since=date(since)) == expected


def test_if_match_takes_precedence_over_if_unmodified_since():
    assert status(if_match=ETAG, if_unmodified_since=date(MTIME - 10)) is None
    assert status(if_match=OTHER, if_unmodified_since=date(MTIME + 10)) == 412


def test_if_match_is_evaluated_before_if_none_match():
    assert status(if_match=OTHER, if_none_match=ETAG) == 412
    assert status(if_match=ETAG, if_none_match=ETAG) == 304
    assert status(if_match=ETAG, if_none_match=OTHER) is None


def test_if_unmodified_since_is_evaluated_before_if_modified_since():
    assert status(if_unmodified_since=date(MTIME - 1), if_modified_since=date(MTIME)) == 412
    assert status(if_unmodified_since=date(MTIME), if_modified_since=date(MTIME)) == 304


@given(
    st.lists(st.tuples(st.booleans(), st.sampled_from([OPAQUE, "a", "5f5e1000", "3039", "x-y"])), max_size=5),
)
def test_entity_tag_list_model(tags):
    header = ", ".join(f'{"W/" if weak else ""}"{opaque}"' for weak, opaque in tags)
    weak_hit = any(opaque == OPAQUE for _, opaque in tags)
    strong_hit = any(opaque == OPAQUE and not weak for weak, opaque in tags)
    if tags:
        assert status(if_none_match=header) == (304 if weak_hit else None)
        assert status(if_match=header) == (None if strong_hit else 412)


# --- If-Range ----------------------------------------------------------------------------


def test_if_range_absent_allows_range():
    assert if_range_allows(None, ETAG, MTIME) is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ETAG, True),  # matching strong tag
        (f" {ETAG} ", True),
        (WEAK, False),  # a weak tag never matches in If-Range
        (OTHER, False),
        (f"W/{OTHER}", False),
        ('""', False),
        (f'"{OPAQUE}x"', False),
        (date(MTIME), True),  # exactly Last-Modified
        (date(MTIME - 1), False),
        (date(MTIME + 1), False),
        ("garbage", False),
        ("", False),
        (OPAQUE, False),
    ],
)
def test_if_range(value, expected):
    assert if_range_allows(value, ETAG, MTIME) is expected


@given(st.integers(0, 2**33), st.integers(-5, 5))
def test_if_range_date_must_equal_last_modified(mtime, delta):
    value = date(max(mtime + delta, 0))
    assert if_range_allows(value, entity_tag(SIZE, mtime), mtime) is (max(mtime + delta, 0) == mtime)
