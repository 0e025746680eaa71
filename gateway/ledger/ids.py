"""Event ids: unique across replicas without coordination, and ordered by time.

A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, the version and variant
bits, then 74 random bits, written as the usual 36 characters of lower-case
hex and dashes. Sorting ids as strings (or as
UUIDs, as PostgreSQL does) sorts them by the millisecond they carry; two
events of the same millisecond are ordered at random, and two replicas
would need to draw the same 74 random bits in the same millisecond to
collide.
"""

from __future__ import annotations

import os
import random

# The random bits come from a generator seeded from the operating system once per process: an id needs
# uniqueness, not secrecy, and a system call per id was the largest part of its cost.
_random = random.Random(os.urandom(32))
_MILLIS = (1 << 48) - 1
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B = (1 << 62) - 1


def new_id(seconds: float) -> str:
    """A new id for an event that happened at `seconds` (Unix time)."""
    bits = _random.getrandbits(74)
    value = (int(seconds * 1000) & _MILLIS) << 80 | _VERSION | (bits >> 62) << 64 | _VARIANT | (bits & _RAND_B)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def id_millis(event_id: str) -> int:
    """The Unix milliseconds an id carries."""
    return int(event_id[:8] + event_id[9:13], 16)
