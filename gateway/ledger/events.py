"""The events: what the edge hands the ledger per answer, and the JSON the platform receives.

`Access` is filled by the edge at the end of each answer for a recording
(plain values only: no HTTP or framework objects, and the token only to be
fingerprinted). The writer thread turns it into an `access` event, and an
inline play also into a step of a listening session; a session closed
after `session_idle_seconds` becomes a `listen` event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

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


dumps = json.JSONEncoder(separators=(",", ":")).encode  # compact JSON, one encoder for every event
_quoted = json.encoder.encode_basestring_ascii  # a JSON string, quotes and escapes included


class Play:
    """What makes an answer part of a listening session: which representation, and its layout."""

    __slots__ = ("layout", "version")

    def __init__(self, version: str, layout: Layout | None) -> None:
        self.version = version  # the representation's ETag: spans of different versions are not comparable
        self.layout = layout


class Access:
    """One edge answer for a recording, as the edge saw it."""

    __slots__ = (
        "backend", "began", "bytes", "client", "complete", "duration", "handoff", "method", "path", "play",
        "ranges", "reason", "signed", "size", "status", "storage", "token", "user_agent", "view",
    )  # fmt: skip

    def __init__(
        self, began: float, duration: float, method: str, status: int, sent: int, token: str, path: str | None,
        storage: str | None, backend: str, size: int | None, ranges: tuple[Span, ...], complete: bool,
        view: Mapping[str, object] | None, signed: bool, client: str | None, user_agent: str | None,
        reason: str | None, handoff: str | None, play: Play | None,
    ) -> None:  # fmt: skip
        self.began = began  # Unix seconds when the request arrived
        self.duration = duration
        self.method = method
        self.status = status
        self.bytes = sent
        self.token = token  # fingerprinted by the writer, never written anywhere
        self.path = path
        self.storage = storage
        self.backend = backend
        self.size = size
        self.ranges = ranges
        self.complete = complete
        self.view = view
        self.signed = signed
        self.client = client
        self.user_agent = user_agent
        self.reason = reason
        self.handoff = handoff
        self.play = play


def access_event(access: Access, fingerprint: str, replica: str) -> tuple[str, str]:
    """(id, JSON text) of the `access` event: written out field by field, which takes half the time of building
    a dict and encoding it (this runs once per request); the strings are escaped by json's own encoder."""
    event_id = new_id(access.began)
    ranges = ",".join([f"[{start},{stop}]" for start, stop in access.ranges])
    return event_id, (
        f'{{"id":"{event_id}","type":"{ACCESS}","time":"{iso(access.began)}","replica":{_text(replica)},'
        f'"method":{_text(access.method)},"path":{_text(access.path)},"storage":{_text(access.storage)},'
        f'"backend":{_text(access.backend)},"status":{int(access.status)},"reason":{_text(access.reason)},'
        f'"bytes":{int(access.bytes)},"size":{"null" if access.size is None else int(access.size)},'
        f'"ranges":[{ranges}],"complete":{_flag(access.complete)},"duration":{round(access.duration, 6)!r},'
        f'"view":{_view(access.view)},"handoff":{_text(access.handoff)},"fingerprint":{_text(fingerprint)},'
        f'"signed":{_flag(access.signed)},"client":{_text(access.client)},"user_agent":{_text(access.user_agent)}}}'
    )


def _text(value: str | None) -> str:
    return "null" if value is None else _quoted(value)


def _flag(value: bool) -> str:
    return "true" if value else "false"


_views: dict[tuple[tuple[str, object], ...], str] = {}  # the few views links ask for, each encoded once


def _view(view: Mapping[str, object] | None) -> str:
    if view is None:
        return "null"
    try:
        key = tuple(view.items())
        found = _views.get(key)
    except TypeError:  # a value that cannot be a key
        return dumps(view)
    if found is None:
        found = dumps(view)
        if len(_views) < 1024:
            _views[key] = found
    return found


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
