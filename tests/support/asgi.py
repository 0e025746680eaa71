"""An ASGI app driven in process: one request at a time, as uvicorn hands it over, and the app's lifespan.

`call` builds the scope the way uvicorn's httptools protocol does (the path
percent-decoded from the raw target, `raw_path` and `query_string` as sent),
gives the app an empty request body, never disconnects, and collects what
the app sends, checking the order of the messages. `serving` runs the app's
lifespan as a server does (startup before the first request, shutdown after
the last) on an event loop in a thread of its own, so what the lifespan
starts (storages, the revocation watcher, the rendition cache) lives between
requests as in a server, and tests ask synchronously (`Served.request`).

What only a real server shows stays in tests/e2e: bytes on the wire (a HEAD
or a 304 sends no body whatever the app passes), keep-alive, uvicorn's own
limits and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

T = TypeVar("T")
Message = dict[str, Any]
App = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
TIMEOUT = 30.0  # seconds one request, or the lifespan's startup or shutdown, may take


@dataclass
class Answer:
    """What the app sent for one request."""

    status: int
    headers: dict[str, str]  # lower-case names, values decoded as Latin-1; last value wins
    body: bytes
    complete: bool  # the last body message said more_body False
    fields: list[tuple[str, str]] = field(default_factory=list)  # every header as sent, in order

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), as `support.http.Reply.header` gives it."""
        wanted = name.lower()
        return next((value for each, value in self.fields if each == wanted), None)


async def call(
    app: App, method: str, target: str, headers: Sequence[tuple[bytes, bytes]] = (), *, timeout: float = TIMEOUT
) -> Answer:
    """One request to `app`: `target` as a client sends it (path and query), `headers` as (name, value) bytes."""
    raw_path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path) if "%" in raw_path else raw_path,  # as uvicorn's httptools protocol
        "raw_path": raw_path.encode("utf-8", "surrogateescape"),
        "query_string": query.encode("latin-1", "replace"),
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 12345),
        "server": ("127.0.0.1", 8080),
    }
    requested = False
    forever: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await forever  # the client stays: never a disconnect
        raise AssertionError("unreachable")

    answer = Answer(0, {}, b"", False)
    body = bytearray()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            assert answer.status == 0, "two response starts"
            answer.status = int(message["status"])
            for name, value in message.get("headers", []):
                pair = (name.decode("latin-1").lower(), value.decode("latin-1"))
                answer.fields.append(pair)
                answer.headers[pair[0]] = pair[1]
        else:
            assert message["type"] == "http.response.body", message
            assert answer.status, "body before the response start"
            assert not answer.complete, "body after the last message"
            body.extend(message.get("body", b""))
            answer.complete = not message.get("more_body", False)

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout)
    finally:
        forever.cancel()
    answer.body = bytes(body)
    return answer


class Lifespan:
    """The ASGI lifespan protocol, run as a server runs it."""

    def __init__(self, app: App, timeout: float = TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self.task = asyncio.create_task(self.app(scope, self.to_app.get, self.from_app.put))
        await self._step("startup")

    async def shutdown(self) -> None:
        await self._step("shutdown")
        assert self.task is not None
        await asyncio.wait_for(self.task, self.timeout)

    async def _step(self, step: str) -> None:
        assert self.task is not None
        await self.to_app.put({"type": f"lifespan.{step}"})
        reply = asyncio.ensure_future(self.from_app.get())
        done, _ = await asyncio.wait({reply, self.task}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
        if reply not in done:
            reply.cancel()
            if self.task in done:
                self.task.result()  # the app's own exception, if it raised one
                raise RuntimeError(f"the app returned during lifespan {step}")
            raise TimeoutError(f"lifespan {step} took more than {self.timeout}s")
        message = reply.result()
        if message["type"] != f"lifespan.{step}.complete":
            raise RuntimeError(f"lifespan {step} failed: {message}")


class Served:
    """An app whose lifespan has started, on an event loop running in a thread of its own."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run `coroutine` on the app's loop and wait (at most `timeout` seconds) for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(
        self, method: str, target: str, headers: Sequence[tuple[bytes, bytes]] = (), timeout: float = TIMEOUT
    ) -> Answer:
        return self.run(call(self.app, method, target, headers, timeout=timeout), timeout + 5)

    def request(
        self, target: str, method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT
    ) -> Answer:
        """Like `support.http.request`: header names and values as a client writes them (sent as Latin-1)."""
        wire = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
        return self.call(method, target, wire, timeout)


@contextlib.contextmanager
def serving(app: App, timeout: float = TIMEOUT) -> Iterator[Served]:
    """`app` with its lifespan started, on a loop in its own thread; the lifespan shut down on the way out."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="asgi-app", daemon=True)
    thread.start()
    served = Served(app, loop)
    try:
        lifespan = Lifespan(app, timeout)
        served.run(lifespan.startup(), timeout + 5)
        try:
            yield served
        finally:
            served.run(lifespan.shutdown(), timeout + 5)
    finally:
        served.run(_settle(), timeout + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()


async def _settle() -> None:
    """Cancel what is still running on the loop, then close its async generators and its executor."""
    loop = asyncio.get_running_loop()
    tasks = [task for task in asyncio.all_tasks(loop) if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
