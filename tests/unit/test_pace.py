"""The size of each read of a streamed body follows how fast its client takes them (gateway/http/send.py)."""

from __future__ import annotations

from gateway.http.send import MIN_READ, Pace

KIB = 1024


def test_a_fast_client_gets_reads_that_double_up_to_the_chunk_size() -> None:
    pace = Pace(512 * KIB)
    sizes = []
    for _ in range(8):
        sizes.append(pace())
        pace.took(pace(), 0.00005)  # the socket took it at once
    assert sizes[:4] == [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB]
    assert pace() == 512 * KIB  # and no more


def test_a_slow_client_keeps_the_smallest_reads() -> None:
    pace = Pace(512 * KIB)
    for _ in range(5):
        pace.took(pace(), 0.1)  # 64 KiB in a tenth of a second: 640 KiB/s
    assert pace() == MIN_READ


def test_a_client_that_slows_down_gets_smaller_reads_again() -> None:
    pace = Pace(512 * KIB)
    for _ in range(4):
        pace.took(pace(), 0.00005)
    assert pace() == 512 * KIB
    pace.took(512 * KIB, 0.5)  # 1 MiB/s now: about 20 KiB per 20 ms
    pace.took(pace(), 0.25)
    assert pace() == 128 * KIB
    for _ in range(3):
        pace.took(pace(), 0.25)
    assert pace() == MIN_READ


def test_a_chunk_size_below_the_smallest_read_is_raised_to_it() -> None:
    assert Pace(4 * KIB)() == MIN_READ
