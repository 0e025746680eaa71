"""The bounded pool of processes that conversions run in.

Conversions are CPU work in C (FFmpeg) driven from Python: in the edge's
process they would hold its event loop and its GIL. They run in a
`ProcessPoolExecutor` of `size` processes started with `spawn` (a fork of a
process running an event loop and threads is not safe), at the lowest CPU
priority (SCHED_IDLE), so the edge's processes always run first. The pool
is made when the worker starts if inline renditions are on (a click should
not wait for processes to start), otherwise at the first conversion; its
processes then stay, with PyAV imported, for the next ones. A process that dies (a decoder crash on
a hostile file, the OOM killer) breaks the pool: it is replaced, and only
the conversions that were running in it fail.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("gateway.transcode")


class ConverterCrashed(Exception):
    """The process running a conversion died."""


class Converter:
    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> ProcessPoolExecutor:
        """The pool, made now if it is not there, with every process started."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_started,
            )
            # Start every process now, not one per conversion as they come.
            for _ in range(self.size):
                self._pool.submit(warm)
        return self._pool

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a pool process; ConverterCrashed if that process died."""
        pool = self.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                log.error("a conversion process died; starting a new pool")
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise ConverterCrashed("the conversion process died") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- in the pool's processes ---------------------------------------------------


def worker_started() -> None:
    """Initializer of each pool process: the lowest CPU priority there is, deaf to Ctrl-C.

    SCHED_IDLE (Linux): the edge's processes preempt a conversion whenever
    they wake, so downloads keep their latency while conversions run; on a
    host saturated by downloads, conversions slow down rather than downloads.
    Elsewhere, the highest nice value.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _exit_with_parent(parent: int) -> None:
    """End this process when the edge worker that started it is gone.

    The pool's own shutdown needs the parent to run its exit handlers, which
    a worker ended by a signal (uvicorn re-raises SIGTERM once drained) or
    killed outright never does: without this, its converters would live on.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def warm() -> int:
    """Start a process and load the converter (PyAV) in it before a request needs it.

    Here rather than in `convert`, so that starting the pool does not load
    PyAV into the edge's own process.
    """
    importlib.import_module(f"{__package__}.convert")
    return os.getpid()
