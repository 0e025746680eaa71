"""The bounded pool of processes that conversions run in.

Conversions are CPU work in C (FFmpeg) driven from Python: in the edge's
process they would hold its event loop and its GIL. They run in a
`ProcessPoolExecutor` of `size` processes started with `spawn` (a fork of a
process running an event loop and threads is not safe), at the lowest CPU
priority (SCHED_IDLE), so the edge's processes always run first. The pool is made at the first conversion, so a
worker that never converts pays nothing; its processes then stay, with
PyAV imported, for the next ones. A process that dies (a decoder crash on
a hostile file, the OOM killer) breaks the pool: it is replaced, and only
the conversions that were running in it fail.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
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

    def _started(self) -> ProcessPoolExecutor:
        if self._pool is None:
            from .convert import warm, worker_started

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
        pool = self._started()
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
