"""Bounded pools of processes for the work PyAV does: probing files and converting them.

That work is C (FFmpeg) on bytes from storage, driven from Python: in the
edge's process it would hold the event loop and the GIL, and a demuxer or
decoder crash on a hostile file would take the worker down with every
download it was sending. It runs in a `ProcessPoolExecutor` of `size`
processes started with `spawn` (a fork of a process running an event loop
and threads is not safe). Conversions run at the lowest CPU priority
(SCHED_IDLE), so the edge's processes always run first; probing, which a
click waits for, at normal priority. A pool is made when the worker starts
if inline renditions are on (a click should not wait for processes to
start), otherwise at its first use; its processes then stay, with PyAV
imported, for the next calls.

A process that dies (a crash on a hostile file, the OOM killer) breaks its
pool and every call running in it: the pool is replaced and those calls
are made once more; a call whose process dies again fails with
`ProcessDied`.
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


class ProcessDied(Exception):
    """The process running the call died."""


class ProcessPool:
    def __init__(self, name: str, size: int, idle: bool) -> None:
        self.name = name  # for the log: "conversion", "probe"
        self.size = size
        self.idle = idle  # run at SCHED_IDLE
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> ProcessPoolExecutor:
        """The pool, made now if it is not there, with every process started."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_started,
                initargs=(self.idle,),
            )
            # Start every process now, not one per call as they come.
            for _ in range(self.size):
                self._pool.submit(warm)
        return self._pool

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a pool process.

        A call whose process dies is made once more in a new pool: the death
        may not be its doing (the OOM killer, or another call's crash, which
        breaks every call running in the pool). Dying twice is ProcessDied.
        `function` must be idempotent.
        """
        for _ in range(2):
            pool = self.start()
            try:
                return await asyncio.wrap_future(pool.submit(function, *args))
            except BrokenProcessPool:
                self._replace(pool)
        raise ProcessDied(f"the {self.name} process died")

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop `broken` (unless another call already has): the next call starts a new pool."""
        if self._pool is broken:
            log.error("a %s process died; starting a new pool", self.name)
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- in the pool's processes ---------------------------------------------------


def worker_started(idle: bool) -> None:
    """Initializer of each pool process: deaf to Ctrl-C, gone with its parent, maybe at idle priority.

    SCHED_IDLE (Linux): the edge's processes preempt a conversion whenever
    they wake, so downloads keep their latency while conversions run; on a
    host saturated by downloads, conversions slow down rather than downloads.
    Elsewhere, the highest nice value.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    if not idle:
        return
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
