"""Draining: noticing SIGTERM at once, so readiness turns 503 while downloads finish."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway")


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
