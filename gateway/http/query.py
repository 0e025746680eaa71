"""The query string of a request, parsed once and bounded.

A player seeking through a recording sends the same link again and again,
so short query strings are parsed once and remembered; long ones (a signed
download name, a mask) are parsed each time, so that no stream of distinct
queries can grow the memory of a worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import parse_qsl

EMPTY: Mapping[str, str] = MappingProxyType({})
# Longer query strings are refused (414) before anything reads them: a signed link with the
# longest download name and a mask of 100 spans stays well below it.
MAX_QUERY_BYTES = 8192
_REMEMBERED_BYTES = 512  # longer query strings are not kept
_REMEMBERED = 1024


def _parse(query: bytes) -> Mapping[str, str]:
    return MappingProxyType(dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)))


_remembered = lru_cache(maxsize=_REMEMBERED)(_parse)


def query_params(query: bytes) -> Mapping[str, str]:
    """The query string as a read-only mapping (last value wins)."""
    if not query:
        return EMPTY
    return _remembered(query) if len(query) <= _REMEMBERED_BYTES else _parse(query)
