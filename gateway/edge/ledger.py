"""What the edge tells the listening ledger: one `Access` per answer for a recording.

`Edge` calls `record()` at the end of every request when the ledger is on
(off, the edge pays one attribute check per request). Not recorded: other
methods (405), health and metrics, and garbage: tokens that do not decode,
decrypt or confine, and query strings too long to read. Recorded: every
answer for a link that decrypted, refusals included (revoked, expired, a
bad signature, unsigned under strict mode, a missing file, a view refused,
a storage failure).

`sent()` runs after a body was sent for an inline link: it finds the
layout of what was sent (reading its first bytes once per version of a
file in this worker, after the client has the answer), so that the ledger
can count the seconds of audio its listening session was sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from ..http.asgi import Scope
from ..http.forwarded import Network, client_address
from ..http.plan import Plan, Representation
from ..http.query import query_params
from ..ledger import HEAD_BYTES, Layout, Ledger, Play, ReadAt, layout
from ..links.decision import Refusal
from ..links.resolver import Resolver, confined_paths
from ..links.signing import SIGNATURE
from ..links.tokens import TokenError
from ..links.views import View, view
from ..storage import StorageUnavailable, StoredFile
from ..transcode.spec import PEAKS, Wanted

if TYPE_CHECKING:
    from .app import Exchange

log = logging.getLogger("gateway.edge")
# Refusal reasons of tokens that are not links at all: no event.
GARBAGE = frozenset({"decode", "decrypt", "path", "query"})
Span = tuple[int, int]


class LedgerHook:
    def __init__(
        self, ledger: Ledger, resolver: Resolver, proxies: tuple[Network, ...], inline_renditions: bool
    ) -> None:
        self.ledger = ledger
        self.resolver = resolver
        self.proxies = proxies
        self.inline_renditions = inline_renditions

    def record(self, scope: Scope, headers: Mapping[bytes, bytes], exchange: Exchange, duration: float) -> None:
        if exchange.method == "OTHER":
            return
        token = scope["path"][1:]
        admitted = exchange.admitted
        if admitted is not None:
            path, storage, signed, handoff = (
                "/" + admitted.path,
                admitted.storage.name,
                admitted.signed,
                admitted.handoff,
            )
            shown = view_fields(admitted.view, exchange.backend == "rendition")
        else:
            if not exchange.reason or exchange.reason in GARBAGE:
                return
            path = self._path(token)
            if path is None:
                return  # refused before decrypting (a bad signature, say), and it does not decrypt either
            storage = handoff = None
            params = query_params(scope["query_string"])
            signed = SIGNATURE in params
            asked = view(params, signed, self.inline_renditions)
            shown = None if isinstance(asked, Refusal) else view_fields(asked, False)
        ranges, complete = sent_spans(exchange.plan, exchange.bytes, exchange.started)
        peer = scope.get("client")
        agent = headers.get(b"user-agent")
        self.ledger.record((  # an Access's fields, in its order
            time.time() - duration, duration, exchange.method, exchange.status, exchange.bytes, token, path, storage,
            exchange.backend, exchange.size, ranges, complete, shown, signed,
            client_address(peer and peer[0], headers.get(b"x-forwarded-for"), self.proxies),
            None if agent is None else agent.decode("latin-1")[:200], exchange.reason or None, handoff, exchange.play,
        ))  # fmt: skip

    def _path(self, token: str) -> str | None:
        """The path a refused link names, if it decrypts to one that confines."""
        try:
            paths = confined_paths(self.resolver.candidates(token))
        except TokenError:
            return None
        return "/" + paths[0] if paths else None

    async def sent(self, exchange: Exchange, file: StoredFile, rep: Representation) -> None:
        """After a body was sent: an inline play of audio is part of a listening session."""
        admitted = exchange.admitted
        if admitted is None or not admitted.view.inline or exchange.method != "GET" or not exchange.bytes:
            return
        wanted = admitted.view.rendition
        if not rep.content_type.startswith(("audio/", "video/")) or (wanted is not None and wanted.kind == PEAKS):
            return
        key = (admitted.storage.name, admitted.path, rep.etag)
        known = self.ledger.layouts.get(key)
        if known is None:
            known = await _layout(file)
            if known is not None:
                self.ledger.layouts.put(key, known)
        exchange.play = Play(rep.etag, None if known is None else known[0])


async def _layout(file: StoredFile) -> tuple[Layout | None] | None:
    """(the layout of `file`, or None for a format whose layout is unknown); None when its head cannot be read."""
    try:
        found = layout(await _read(file, 0), file.size)
        if isinstance(found, ReadAt):
            found = layout(await _read(file, found.offset), file.size, found.offset)
    except (StorageUnavailable, OSError) as exc:
        log.info("ledger: the head of a played file could not be read: %s", exc)
        return None
    return (found if isinstance(found, Layout) else None,)


async def _read(file: StoredFile, start: int) -> bytes:
    stop = min(file.size, start + HEAD_BYTES)
    if file.whole is not None:
        return file.whole[start:stop]
    parts = []
    async with contextlib.aclosing(file.iter_bytes(start, stop)) as chunks:  # type: ignore[type-var]
        async for data in chunks:
            parts.append(data)
    return b"".join(parts)


def sent_spans(plan: Plan | None, sent: int, started: bool) -> tuple[tuple[Span, ...], bool]:
    """The byte spans of the representation whose bytes went out (`sent` body bytes), and whether all did."""
    if plan is None or not plan.body or plan.reply is not None:
        return (), started  # a refusal, a handoff, HEAD, 304, 412, 416: no bytes of the recording
    complete = started and sent >= plan.length
    if not plan.parts:
        start, stop = plan.spans[0]
        count = min(sent, stop - start)
        return ((start, start + count),) if count > 0 else (), complete
    spans = []
    offset = 0
    for head, (start, stop) in plan.parts:  # multipart/byteranges: part headers between the spans
        offset += len(head)
        count = min(max(sent - offset, 0), stop - start)
        if count:
            spans.append((start, start + count))
        offset += stop - start
    return tuple(spans), complete


def view_fields(shown: View, rendition: bool) -> Mapping[str, object]:
    """What the link asked to see, for the event: `inline`, `format`, `filename`, … and whether a rendition was sent."""
    try:
        return _view_fields(shown, rendition)
    except TypeError:  # a view with an unhashable field: described without the cache
        return _view_fields.__wrapped__(shown, rendition)


@lru_cache(maxsize=1024)
def _view_fields(shown: View, rendition: bool) -> Mapping[str, object]:
    fields: dict[str, object] = {}
    for item in dataclasses.fields(shown):
        value = getattr(shown, item.name)
        if isinstance(value, Wanted):
            if value.explicit:
                fields["format"] = value.kind
                if value.kind == PEAKS:
                    fields["pixels"] = value.pixels
                if value.split:
                    fields["split"] = True
        elif isinstance(value, bool):  # `inline` always; the other flags (`player`) when asked
            if value or item.name == "inline":
                fields[item.name] = value
        elif isinstance(value, int | float | str) or (isinstance(value, tuple) and value):
            fields[item.name] = value
    fields["rendition"] = rendition
    return fields
