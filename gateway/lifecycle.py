"""What both apps (edge and link API) do at start and stop, and draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .revocation import Revocations
from .storage import Storage

log = logging.getLogger("gateway")


@contextlib.asynccontextmanager
async def serving(storages: Sequence[Storage], revocations: Revocations) -> AsyncIterator[contextlib.AsyncExitStack]:
    """Storages started (closed on exit), the revocation list loaded and watched."""
    async with contextlib.AsyncExitStack() as stack:
        for storage in storages:
            await storage.start()
            stack.push_async_callback(storage.aclose)
        await revocations.load()
        watcher = asyncio.create_task(revocations.watch())
        stack.callback(watcher.cancel)
        yield stack


class Drain:
    """Whether this process has been asked to stop (and is letting downloads finish)."""

    def __init__(self) -> None:
        self.started = False

    def watch_signals(self) -> None:
        """Notice SIGTERM/SIGINT the moment they arrive, then let the server drain.

        uvicorn owns the signal handlers (it stops accepting and waits up to
        the drain time for running downloads); we chain in front of its
        handler rather than replace it. Signals reach the main thread only.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def chained(sig: int, frame: Any, previous: Callable[[int, Any], Any] = previous) -> None:
                if not self.started:
                    self.started = True
                    log.info("draining: readiness is now 503; running downloads may finish")
                previous(sig, frame)

            signal.signal(signum, chained)
