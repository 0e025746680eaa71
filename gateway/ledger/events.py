"""The events: what the edge hands the ledger per answer, and the JSON the platform receives.

`Access` is filled by the edge at the end of each answer for a recording
(plain values only: no HTTP or framework objects, and the token only to be
fingerprinted). The worker's ledger turns what its edge answered into
`access` events every 50 ms (`encode_accesses`); its helper process folds
the inline plays into listening sessions, and a session idle for
`session_idle_seconds` becomes a `listen` event (`listen_event`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from .audio import Layout, Span, heard, union
from .ids import new_id

ACCESS = "access"
LISTEN = "listen"


_second: tuple[int, str] = (-1, "")  # the last second written, and how (most events share it with the one before)


def iso(seconds: float) -> str:
    """UTC with milliseconds, as the access log writes it: 2026-11-26T19:13:01.053Z."""
    global _second
    millis = int(seconds * 1000)
    whole, written = _second
    if millis // 1000 != whole:
        whole, written = millis // 1000, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
        _second = (whole, written)
    return f"{written}.{millis % 1000:03d}Z"


dumps = json.JSONEncoder(separators=(",", ":")).encode  # compact JSON (a session's state)
_encoder = msgspec.json.Encoder()


class Play(NamedTuple):
    """What makes an answer part of a listening session: which representation, and its layout."""

    version: str  # the representation's ETag: spans of different versions are not comparable
    layout: Layout | None


class Access(NamedTuple):
    """One edge answer for a recording, as the edge saw it.

    The edge hands the ledger a plain tuple of these fields, in this order
    (`Record`): a tuple is made and pickled in C, where a named tuple is
    made, pickled and unpickled through Python code; `access()` names its
    fields again, without a copy.
    """

    began: float  # Unix seconds when the request arrived
    duration: float
    method: str
    status: int
    bytes: int
    token: str  # fingerprinted by the worker's ledger, never written anywhere
    path: str | None
    storage: str | None
    backend: str
    size: int | None
    ranges: tuple[Span, ...]
    complete: bool
    view: Mapping[str, object] | None
    signed: bool
    client: str | None
    user_agent: str | None
    reason: str | None
    handoff: str | None
    play: Play | None


Record = tuple[Any, ...]  # the fields of an Access, in its order
_new = tuple.__new__


def access(record: Record) -> Access:
    """The record's fields by name (no copy, no Python code run)."""
    return _new(Access, record)


class AccessEvent(msgspec.Struct, gc=False):
    """An `access` event as the platform receives it (field order is the JSON's)."""

    id: str
    type: str
    time: str
    replica: str
    method: str
    path: str | None
    storage: str | None
    backend: str
    status: int
    reason: str | None
    bytes: int
    size: int | None
    ranges: tuple[Span, ...]
    complete: bool
    duration: float
    view: Mapping[str, object] | None
    handoff: str | None
    fingerprint: str
    signed: bool
    client: str | None
    user_agent: str | None


def encode_accesses(
    records: Iterable[Record], fingerprint_of: Callable[[str], str], replica: str
) -> tuple[bytes, int, list[tuple[str, Record]]]:
    """The `access` events of `records` as JSON lines (one event a line, each ended by a newline), how many,
    and the plays among them with their links' fingerprints (for the listening sessions).

    msgspec writes the lines in one call, in C: this is the ledger's per-request work, done every 50 ms
    for what the worker answered meanwhile."""
    events = []
    plays = []
    for record in records:
        a = access(record)
        link = fingerprint_of(a.token)
        events.append(
            AccessEvent(
                new_id(a.began), ACCESS, iso(a.began), replica, a.method, a.path, a.storage, a.backend, a.status,
                a.reason, a.bytes, a.size, a.ranges, a.complete, round(a.duration, 6), a.view, a.handoff, link,
                a.signed, a.client, a.user_agent,
            )
        )  # fmt: skip
        if a.play is not None:
            plays.append((link, record))
    return _encoder.encode_lines(events), len(events), plays


def encode_lines(events: Iterable[Mapping[str, object]]) -> bytes:
    """Events (dicts) as JSON lines."""
    return _encoder.encode_lines(list(events))


# -- listening sessions --------------------------------------------------------


def session_key(fingerprint: str, access: Access) -> str:
    """One link, one client, one version of what was sent."""
    assert access.play is not None
    return f"{fingerprint} {access.client or ''} {access.play.version}"


def new_session(access: Access, fingerprint: str, replica: str) -> dict[str, Any]:
    assert access.play is not None
    layout = access.play.layout
    return {
        "started": access.began,
        "ended": access.began + access.duration,
        "replica": replica,
        "path": access.path,
        "storage": access.storage,
        "fingerprint": fingerprint,
        "signed": access.signed,
        "client": access.client,
        "user_agent": access.user_agent,
        "view": access.view,
        "layout": None if layout is None else layout.as_list(),
        "ranges": [list(span) for span in union(access.ranges)],
        "plays": 1,
        "bytes": access.bytes,
    }


def merge(state: dict[str, Any], access: Access) -> dict[str, Any]:
    """`state` with one more play of the same session (plays may arrive out of order from several workers)."""
    assert access.play is not None
    state["started"] = min(state["started"], access.began)
    state["ended"] = max(state["ended"], access.began + access.duration)
    state["ranges"] = [list(span) for span in union([*map(tuple, state["ranges"]), *access.ranges])]
    state["plays"] += 1
    state["bytes"] += access.bytes
    if state["layout"] is None and access.play.layout is not None:
        state["layout"] = access.play.layout.as_list()
    state["user_agent"] = state["user_agent"] or access.user_agent
    return state


def listen_event(state: Mapping[str, Any]) -> dict[str, object]:
    """The `listen` event of a closed session: seconds from the layout, or none when it is unknown."""
    ranges: list[Span] = [(int(start), int(stop)) for start, stop in state["ranges"]]
    seconds: float | None = None
    spans: list[list[float]] | None = None
    estimated = duration = None
    if state["layout"] is not None:
        layout = Layout.from_list(state["layout"])
        total, heard_spans = heard(ranges, layout)
        seconds, estimated, duration = round(total, 3), not layout.exact, round(layout.duration, 3)
        spans = [[round(start, 3), round(stop, 3)] for start, stop in heard_spans]
    return {
        "id": new_id(state["started"]),
        "type": LISTEN,
        "time": iso(state["started"]),
        "ended": iso(state["ended"]),
        "replica": state["replica"],
        "path": state["path"],
        "storage": state["storage"],
        "seconds": seconds,
        "estimated": estimated,
        "heard": spans,
        "duration": duration,
        "ranges": [list(span) for span in ranges],
        "plays": state["plays"],
        "bytes": state["bytes"],
        "view": state["view"],
        "fingerprint": state["fingerprint"],
        "signed": state["signed"],
        "client": state["client"],
        "user_agent": state["user_agent"],
    }
