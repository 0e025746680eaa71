"""Event ids: unique across replicas without coordination, and ordered by time.

A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, the version and variant
bits, then 74 random bits from the operating system, written as the usual
36 characters of lower-case hex and dashes. Sorting ids as strings (or as
UUIDs, as PostgreSQL does) sorts them by the millisecond they carry; two
events of the same millisecond are ordered at random, and two replicas
would need to draw the same 74 random bits in the same millisecond to
collide.
"""

from __future__ import annotations

import os

_MILLIS = (1 << 48) - 1
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_A = 0xFFF
_RAND_B = (1 << 62) - 1


def new_id(seconds: float) -> str:
    """A new id for an event that happened at `seconds` (Unix time)."""
    random = int.from_bytes(os.urandom(10), "big")
    value = (
        (int(seconds * 1000) & _MILLIS) << 80
        | _VERSION
        | ((random >> 62) & _RAND_A) << 64
        | _VARIANT
        | (random & _RAND_B)
    )
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def id_millis(event_id: str) -> int:
    """The Unix milliseconds an id carries."""
    return int(event_id[:8] + event_id[9:13], 16)
