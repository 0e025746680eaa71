"""Bounded pools of processes for the work PyAV does: probing files and converting them.

That work is C (FFmpeg) on bytes from storage, driven from Python: in the
edge's process it would hold the event loop and the GIL, and a demuxer or
decoder crash on a hostile file would take the worker down with every
download it was sending. It runs in a `ProcessPoolExecutor` of `size`
processes started with `spawn` (a fork of a process running an event loop
and threads is not safe). Conversions run at the lowest CPU priority
(SCHED_IDLE), so the edge's processes always run first; probing, which a
click waits for, at normal priority. A pool is made at its first call and
its processes start as calls need them (about half a second, PyAV's import
included); they stay, with PyAV loaded, for the next calls, and are retired
once the pool has been idle for `idle_seconds`, so an idle gateway holds no
converter (each one is about 45 MiB). The functions run are named
(`"module:function"`), not passed: the edge's process never imports them,
and so never loads PyAV.

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
from typing import Any

log = logging.getLogger("gateway.transcode")


class ProcessDied(Exception):
    """The process running the call died."""


IDLE_SECONDS = 120.0  # a pool unused this long lets its processes go


class ProcessPool:
    def __init__(self, name: str, size: int, idle: bool, idle_seconds: float = IDLE_SECONDS) -> None:
        self.name = name  # for the log: "conversion", "probe"
        self.size = size
        self.idle = idle  # run at SCHED_IDLE
        self.idle_seconds = idle_seconds
        self._pool: ProcessPoolExecutor | None = None
        self._calls = 0  # running now
        self._retiring: asyncio.TimerHandle | None = None

    def start(self) -> ProcessPoolExecutor:
        """The pool, made now if it is not there; its processes start as calls need them."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_started,
                initargs=(self.idle, os.getpid()),
            )
        return self._pool

    async def run(self, target: str | Callable[..., Any], *args: Any) -> Any:
        """`module:function` (or a module-level function, by its name) called with `args` in a pool process.

        A call whose process dies is made once more in a new pool: the death
        may not be its doing (the OOM killer, or another call's crash, which
        breaks every call running in the pool). Dying twice is ProcessDied.
        The function must be idempotent.
        """
        if not isinstance(target, str):
            target = f"{target.__module__}:{target.__qualname__}"
        self._calls += 1
        if self._retiring is not None:
            self._retiring.cancel()
            self._retiring = None
        try:
            for _ in range(2):
                pool = self.start()
                try:
                    return await asyncio.wrap_future(pool.submit(call, target, *args))
                except BrokenProcessPool:
                    self._replace(pool)
            raise ProcessDied(f"the {self.name} process died")
        finally:
            self._calls -= 1
            if not self._calls and self._pool is not None:
                self._retiring = asyncio.get_running_loop().call_later(self.idle_seconds, self._retire)

    def _retire(self) -> None:
        """Idle for `idle_seconds`: let the processes go (the next call starts new ones)."""
        self._retiring = None
        if not self._calls and self._pool is not None:
            log.info("the %s processes were idle for %gs: stopping them", self.name, self.idle_seconds)
            self.close()

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop `broken` (unless another call already has): the next call starts a new pool."""
        if self._pool is broken:
            log.error("a %s process died; starting a new pool", self.name)
            self._pool = None
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._retiring is not None:
            self._retiring.cancel()
            self._retiring = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# -- in the pool's processes ---------------------------------------------------


def worker_started(idle: bool, parent: int) -> None:
    """Initializer of each pool process: deaf to Ctrl-C, gone with its parent, maybe at idle priority.

    SCHED_IDLE (Linux): the edge's processes preempt a conversion whenever
    they wake, so downloads keep their latency while conversions run; on a
    host saturated by downloads, conversions slow down rather than downloads.
    Elsewhere, the highest nice value.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent's pid comes from the parent: one that died while this process was still starting
    # would otherwise leave it watching pid 1 (seen: converters orphaned for hours).
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
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


def call(target: str, *args: Any) -> Any:
    """Run `module:function` (imported here, in the pool process) with `args`."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(*args)
