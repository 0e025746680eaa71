"""The edge's control endpoints: liveness, readiness, and /metrics where it is allowed.

Everything here is rare and cheap, so it is an ordinary Starlette app; the
file route in front of it is plain ASGI (see `app`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..common.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..common.metrics import exposition
from ..storage import Storage
from .drain import Drain

_NO_STORE = {"cache-control": "no-store"}
READY_WAIT_SECONDS = 0.8  # how long /readyz waits for a storage's check before it says what it last knew


class Readiness:
    """The last known state of each storage, refreshed by one background check at a time per storage.

    `/readyz` must answer within a second whatever the storages do: an S3
    endpoint stalled in a brownout keeps its HEAD waiting for the data
    path's deadline (20 s), and a probe that times out on every replica at
    once would take disk-served recordings offline with the archive. The
    answer waits a moment for a check already under way, then says what was
    last known (a storage never checked yet counts as unavailable).
    """

    def __init__(self, storages: Sequence[Storage]) -> None:
        self.storages = tuple(storages)
        self._known: dict[int, bool] = {}
        self._checks: dict[int, asyncio.Task[bool]] = {}

    async def states(self) -> list[tuple[Storage, bool]]:
        checks = []
        for number, storage in enumerate(self.storages):
            check = self._checks.get(number)
            if check is None:
                check = self._checks[number] = asyncio.ensure_future(storage.ready())
                check.add_done_callback(lambda done, number=number: self._settle(number, done))
            checks.append(check)
        await asyncio.wait(checks, timeout=READY_WAIT_SECONDS)
        return [(storage, self._known.get(number, False)) for number, storage in enumerate(self.storages)]

    def _settle(self, number: int, check: asyncio.Task[bool]) -> None:
        self._checks.pop(number, None)
        if not check.cancelled():
            self._known[number] = check.exception() is None and bool(check.result())


def metrics_endpoint(request: Request) -> Response:
    """Prometheus scrape; a plain function, so Starlette runs the file reads in a thread."""
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)


def control_app(
    storages: Sequence[Storage],
    drain: Drain,
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]],
    serve_metrics: bool,
) -> Starlette:
    readiness = Readiness(storages)

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok\n", headers=_NO_STORE)

    async def readyz(request: Request) -> PlainTextResponse:
        """Each storage's state; 503 only for what taking this replica out of service can help.

        A local directory that is unreadable is this replica's problem (a lost
        mount): 503. A remote store that is down is every replica's problem:
        failing them all would leave the Service with no endpoints even for
        files on disk, so it is reported but does not fail readiness, unless
        no storage at all is reachable. Draining is always 503.
        """
        states = await readiness.states()
        body = "".join(f"{storage.label}: {'ok' if ok else 'unavailable'}\n" for storage, ok in states)
        ready = not drain.started and any(ok for _, ok in states) and all(ok for s, ok in states if s.local)
        if drain.started:
            body += "draining\n"
        return PlainTextResponse(body, status_code=200 if ready else 503, headers=_NO_STORE)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if serve_metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    return Starlette(routes=routes, lifespan=lifespan)
