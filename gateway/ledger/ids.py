"""Event ids: unique across replicas without coordination, and ordered by time.

A ULID (https://github.com/ulid/spec): 48 bits of Unix milliseconds, then
80 random bits from the operating system, written as 26 characters of
Crockford's base32. Sorting ids as strings sorts them by the millisecond
they carry; two events of the same millisecond are ordered at random, and
two replicas would need to draw the same 80 random bits in the same
millisecond to collide.
"""

from __future__ import annotations

import os

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_BITS = 48
_RANDOM_BITS = 80
LENGTH = 26


def new_id(seconds: float) -> str:
    """A new id for an event that happened at `seconds` (Unix time)."""
    millis = int(seconds * 1000) & ((1 << _TIME_BITS) - 1)
    value = (millis << _RANDOM_BITS) | int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")
    chars = []
    for _ in range(LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def id_millis(event_id: str) -> int:
    """The Unix milliseconds an id carries."""
    value = 0
    for char in event_id:
        value = value * 32 + _ALPHABET.index(char)
    return value >> _RANDOM_BITS
