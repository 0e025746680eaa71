"""The edge's control endpoints: liveness, readiness, and /metrics where it is allowed.

Everything here is rare and cheap, so it is an ordinary Starlette app; the
file route in front of it is plain ASGI (see `app`).
"""

from __future__ import annotations

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


def metrics_endpoint(request: Request) -> Response:
    """Prometheus scrape; a plain function, so Starlette runs the file reads in a thread."""
    return Response(exposition(), media_type=METRICS_CONTENT_TYPE)


def control_app(
    storages: Sequence[Storage],
    drain: Drain,
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]],
    serve_metrics: bool,
) -> Starlette:
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
        states = [(storage, await storage.ready()) for storage in storages]
        body = "".join(f"{storage.label}: {'ok' if ok else 'unavailable'}\n" for storage, ok in states)
        ready = not drain.started and any(ok for _, ok in states) and all(ok for s, ok in states if s.local)
        if drain.started:
            body += "draining\n"
        return PlainTextResponse(body, status_code=200 if ready else 503, headers=_NO_STORE)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if serve_metrics:
        routes.append(Route("/metrics", metrics_endpoint))
    return Starlette(routes=routes, lifespan=lifespan)
