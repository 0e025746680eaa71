"""The Range header as pure functions, against RFC 9110 §14 and a set-of-bytes model."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from gateway.http.ranges import RangeNotSatisfiable, coalesce, content_range, parse_range

SIZE = 10


def outcome(header: str, size: int = SIZE, max_ranges: int = 16):
    """parse_range's answer as a value: spans, None, or "416"."""
    try:
        return parse_range(header, size, max_ranges)
    except RangeNotSatisfiable:
        return "416"


# --- RFC 9110 table ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", ((0, 1),)),  # the first byte
        ("bytes=-1", ((9, 10),)),  # the last byte
        ("bytes=9-9", ((9, 10),)),
        ("bytes=5-", ((5, 10),)),  # open-ended
        ("bytes=0-", ((0, 10),)),
        ("bytes=0-9", ((0, 10),)),
        ("bytes=0-999999", ((0, 10),)),  # last-pos beyond the end is clamped
        ("bytes=3-99999999999999999999999999", ((3, 10),)),
        ("bytes=-999", ((0, 10),)),  # suffix longer than the file: the whole file
        ("bytes=-10", ((0, 10),)),
        ("bytes=2-4", ((2, 5),)),
        ("bytes=0-1,3-4", ((0, 2), (3, 5))),
        ("bytes=5-9,0-2", ((5, 10), (0, 3))),  # request order kept (RFC 9110 §15.3.7.2)
        ("bytes=0-5,3-8", ((0, 9),)),  # overlapping: merged
        ("bytes=0-1,2-3", ((0, 4),)),  # adjacent: merged
        ("bytes=0-0,0-0,0-0", ((0, 1),)),
        ("bytes=-2,0-0", ((8, 10), (0, 1))),
        ("bytes=00005-00006", ((5, 7),)),  # leading zeros are digits
    ],
)
def test_satisfiable_ranges(header, expected):
    assert parse_range(header, SIZE, 16) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=-0",  # a zero-length suffix is unsatisfiable
        "bytes=10-",  # first-pos == size
        "bytes=10-10",
        "bytes=11-20",
        "bytes=999999-",
        "bytes=10-,-0",
        "bytes=-0,-0",
    ],
)
def test_unsatisfiable_ranges_raise(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, SIZE, 16)


def test_unsatisfiable_specs_are_dropped_next_to_satisfiable_ones():
    assert parse_range("bytes=10-,2-3,-0", SIZE, 16) == ((2, 4),)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=abc",
        "bytes=5-3",  # last-pos before first-pos: invalid
        "bytes=",
        "bytes=--1",
        "bytes 0-1",  # no "="
        "bytes=-",
        "bytes=1-2-3",
        "bytes=0x1-2",
        "bytes=+1-2",
        "bytes=1.5-2",
        "bytes=1",
        "bytes=0-1,abc",  # one invalid spec makes the whole set invalid
        "bytes=5-3,0-1",
        "bytes=0-1;x",
        "bytes=,",
        "bytes=, ,",
        "=0-1",
        "",
        "0-1",
        "bytes=0 - 1",
    ],
)
def test_syntax_errors_are_ignored(header):
    assert parse_range(header, SIZE, 16) is None


@pytest.mark.parametrize("header", ["items=0-1", "byte=0-1", "bits=0-1", "none", "bytesx=0-1"])
def test_other_units_are_ignored(header):
    assert parse_range(header, SIZE, 16) is None


@pytest.mark.parametrize("header", ["Bytes=0-1", "BYTES=0-1", "bYtEs=0-1"])
def test_unit_is_case_insensitive(header):
    assert parse_range(header, SIZE, 16) == ((0, 2),)


def test_more_specs_than_max_ranges_are_ignored():
    header = "bytes=0-0,2-2,4-4"
    assert parse_range(header, SIZE, 2) is None
    assert parse_range(header, SIZE, 3) == ((0, 1), (2, 3), (4, 5))
    assert parse_range("bytes=0-0", SIZE, 1) == ((0, 1),)
    assert parse_range("bytes=0-0,1-1", SIZE, 1) is None


@pytest.mark.parametrize(
    "header", ["bytes= 0-1 , 3-4", "bytes=0-1 ,3-4", "bytes=0-1,\t3-4", "bytes=\t0-1\t,3-4 ", " bytes=0-1,3-4"]
)
def test_whitespace_around_specs(header):
    assert parse_range(header, SIZE, 16) == ((0, 2), (3, 5))


@pytest.mark.parametrize("header", ["bytes=0-1,,3-4", "bytes=,0-1,3-4", "bytes=0-1,3-4,", "bytes=0-1, ,3-4"])
def test_empty_list_elements_are_skipped(header):
    assert parse_range(header, SIZE, 16) == ((0, 2), (3, 5))


def test_empty_list_elements_do_not_count_towards_max_ranges():
    assert parse_range("bytes=0-1,,,,,3-4", SIZE, 2) == ((0, 2), (3, 5))


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=0-0", "bytes=0-100", "bytes=1-"])
def test_zero_size_byte_positions_are_unsatisfiable(header):
    # Every first-pos is >= 0 == the length: RFC 9110 and nginx agree on 416.
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 0, 16)


@pytest.mark.parametrize("header", ["bytes=-1", "bytes=-100", "bytes=-0"])
def test_zero_size_suffix_ranges_never_produce_spans(header):
    # RFC 9110 §14.1.2 calls a non-zero suffix satisfiable on an empty representation (so a
    # server may ignore the Range); nginx answers 416. Either way, there is no byte to send.
    assert outcome(header, size=0) in (None, "416")


def test_zero_size_syntax_errors_are_still_ignored():
    assert parse_range("bytes=abc", 0, 16) is None
    assert parse_range("items=0-1", 0, 16) is None


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        # Syntactically valid, absurdly large positions. Python refuses int() of more than 4300
        # digits (ValueError), which must not escape: the edge would answer 500.
        ("bytes=0-" + "9" * 5000, [((0, SIZE),), None, "416"]),
        ("bytes=-" + "9" * 5000, [((0, SIZE),), None, "416"]),
        ("bytes=" + "9" * 5000 + "-", [None, "416"]),
        ("bytes=" + "9" * 5000 + "-" + "9" * 5001, [None, "416"]),
    ],
    ids=["huge-last-pos", "huge-suffix", "huge-first-pos", "huge-both"],
)
def test_huge_numbers_do_not_crash(header, allowed):
    assert outcome(header) in allowed


# --- model -------------------------------------------------------------------------------

_MODEL_SPEC = re.compile(r"[ \t]*([0-9]*)-([0-9]*)[ \t]*")


def model(header: str, size: int, max_ranges: int):
    """A slow, obvious reading of RFC 9110: the set of byte offsets to send."""
    unit, sep, rest = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s for s in rest.split(",") if s.strip(" \t")]
    if not specs or len(specs) > max_ranges:
        return None
    offsets: set[int] = set()
    satisfiable = False
    for spec in specs:
        m = _MODEL_SPEC.fullmatch(spec)
        if not m or (not m[1] and not m[2]):
            return None
        if m[1]:
            first = int(m[1])
            last = int(m[2]) if m[2] else None
            if last is not None and last < first:
                return None
            wanted = range(first, size if last is None else last + 1)
        else:
            wanted = range(size - int(m[2]), size)
        covered = {i for i in wanted if 0 <= i < size}
        satisfiable |= bool(covered)
        offsets |= covered
    return offsets if satisfiable else "416"


@st.composite
def range_headers(draw):
    def spec():
        kind = draw(st.sampled_from(["closed", "open", "suffix", "garbage", "empty"]))
        # Mostly small positions, so that specs overlap, touch and run past the end often.
        a = draw(st.one_of(st.integers(0, 6), st.integers(0, 60)))
        b = draw(st.one_of(st.integers(0, 6), st.integers(0, 60)))
        ws = st.sampled_from(["", "", " ", "\t"])
        body = {
            "closed": f"{min(a, b)}-{max(a, b)}" if draw(st.booleans()) else f"{a}-{b}",
            "open": f"{a}-",
            "suffix": f"-{b}",
            "garbage": draw(st.sampled_from(["x", "-", "1-2-3", "--1", "a-b", "1 2-3"])),
            "empty": "",
        }[kind]
        return draw(ws) + body + draw(ws)

    specs = [spec() for _ in range(draw(st.integers(1, 6)))]
    unit = draw(st.sampled_from(["bytes", "bytes", "bytes", "Bytes", "items"]))
    return f"{unit}={','.join(specs)}"


@given(range_headers(), st.one_of(st.integers(1, 16), st.integers(1, 50)), st.integers(1, 6))
@example("bytes=0-1,2-3", 10, 6)
@example("bytes=-3,0-6", 10, 6)
@example("bytes= 4-, 0-3", 5, 2)
@example("bytes=4-,0-2", 10, 6)  # disjoint parts out of order: kept in request order
def test_parse_range_agrees_with_the_model(header, size, max_ranges):
    expected = model(header, size, max_ranges)
    got = outcome(header, size, max_ranges)
    if expected is None or expected == "416":
        assert got == expected
        return
    assert isinstance(got, tuple) and got
    for start, stop in got:
        assert 0 <= start < stop <= size
    ordered = sorted(got)  # parts keep the request's order (RFC 9110 §15.3.7.2), so sort to compare
    for (_, stop), (start, _) in itertools.pairwise(ordered):
        assert stop < start  # disjoint and not even adjacent
    assert {i for start, stop in got for i in range(start, stop)} == expected
    assert sum(stop - start for start, stop in got) <= size


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 1000))
def test_single_closed_range(first, last, size):
    assume(first <= last)
    got = outcome(f"bytes={first}-{last}", size)
    if first >= size:
        assert got == "416"
    else:
        assert got == ((first, min(last + 1, size)),)


@given(st.integers(1, 1000), st.integers(0, 1000))
def test_single_suffix_range(suffix, size):
    got = outcome(f"bytes=-{suffix}", size)
    if size == 0:
        assert got in (None, "416")
    else:
        assert got == ((max(size - suffix, 0), size),)


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), min_size=1, max_size=12))
def test_coalesce_preserves_the_covered_bytes(pairs):
    spans = [(start, start + length) for start, length in pairs]
    expected = {i for start, stop in spans for i in range(start, stop)}
    merged = coalesce(list(spans))
    assert {i for start, stop in merged for i in range(start, stop)} == expected
    # Disjoint and not touching, whatever their order.
    ordered = sorted(merged)
    for (_, stop), (start, _) in itertools.pairwise(ordered):
        assert stop < start
    assert len(merged) <= len(spans)
    # Each part stands where the first span it absorbed stood in the request.
    firsts = [min(i for i, (a, b) in enumerate(spans) if s <= a and b <= e) for s, e in merged]
    assert firsts == sorted(firsts)


def test_coalesce_examples():
    assert coalesce([(5, 10), (0, 5)]) == ((0, 10),)
    assert coalesce([(500, 510), (0, 10), (5, 15)]) == ((500, 510), (0, 15))
    assert coalesce([(0, 2), (10, 12), (1, 11)]) == ((0, 12),)
    assert coalesce([(0, 3), (4, 6)]) == ((0, 3), (4, 6))
    assert coalesce([(0, 10), (2, 3)]) == ((0, 10),)
    assert coalesce([(7, 8)]) == ((7, 8),)


# --- Content-Range -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("span", "size", "expected"),
    [
        ((0, 1), 10, "bytes 0-0/10"),
        ((9, 10), 10, "bytes 9-9/10"),
        ((0, 10), 10, "bytes 0-9/10"),
        ((5, 1000), 5000, "bytes 5-999/5000"),
    ],
)
def test_content_range(span, size, expected):
    assert content_range(span, size) == expected


@given(st.integers(0, 10**12), st.integers(1, 10**6), st.integers(0, 10**6))
def test_content_range_reads_back(start, length, extra):
    size = start + length + extra
    value = content_range((start, start + length), size)
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", value)
    assert m
    assert (int(m[1]), int(m[2]) + 1, int(m[3])) == (start, start + length, size)
