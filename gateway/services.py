"""The shared services, built once per process for `serve`, `api` and the command line.

Keys, storages, the resolver, the signer, the revocation list, the
renditions and the link admission that ties them together are made here
and nowhere else, so the edge and the link inspector can never be wired
differently; so is the edge's listening ledger, when webhooks are
configured. `running()` starts what needs starting (storage clients, the
revocation watcher, the rendition cache, the ledger's helper process) and
stops it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .config import Settings
from .ledger import Delivery, Ledger
from .links.admission import Admission
from .links.inspect import LinkInspector
from .links.resolver import Resolver
from .links.revocation import Revocations
from .links.signing import LinkSigner
from .storage import Storage
from .storage.build import build_storages
from .transcode.renditions import Renditions


@dataclass
class Services:
    settings: Settings
    storages: tuple[Storage, ...]
    resolver: Resolver
    signer: LinkSigner
    revocations: Revocations
    renditions: Renditions
    admission: Admission
    inspector: LinkInspector
    ledger: Ledger | None = None  # the edge's, when webhook URLs are configured

    @contextlib.asynccontextmanager
    async def running(self, watch_revocations: bool = True) -> AsyncIterator[contextlib.AsyncExitStack]:
        """Storages started (closed on exit), the revocation list loaded (and watched), renditions ready."""
        async with contextlib.AsyncExitStack() as stack:
            for storage in self.storages:
                await storage.start()
                stack.push_async_callback(storage.aclose)
            await self.revocations.load()
            if watch_revocations:
                watcher = asyncio.create_task(self.revocations.watch())
                stack.callback(watcher.cancel)
            await self.renditions.start()
            stack.push_async_callback(self.renditions.aclose)
            if self.ledger is not None:
                await self.ledger.start()
                stack.push_async_callback(self.ledger.stop)  # what is queued is committed first
            yield stack


def build_services(settings: Settings, *, converting: bool = True, clock: Callable[[], float] = time.time) -> Services:
    """Everything the link admission needs; `converting`: this process is the edge (makes renditions, and keeps
    the ledger when it is on)."""
    storages = tuple(build_storages(settings.storages, settings.edge.chunk_size, settings.disk, settings.s3))
    resolver = Resolver(settings.keys, storages)
    signer = LinkSigner(settings.keys)
    revocations = Revocations(settings.revocation_file)
    transcode = settings.transcode
    renditions = Renditions(
        cache_dir=transcode.cache_dir,
        cache_bytes=transcode.cache_bytes,
        max_conversions=transcode.max_conversions,
        max_cpu_seconds=transcode.max_cpu_seconds,
        max_rendition_bytes=transcode.rendition_limit,
        queue_seconds=transcode.queue_seconds,
        max_queued=transcode.max_queued,
        inline=transcode.inline,
        chunk_size=settings.edge.chunk_size,
        converting=converting,
    )
    admission = Admission(resolver, signer, revocations, renditions, settings.edge.require_signed, clock)
    inspector = LinkInspector(settings.keys, admission)
    ledger = _ledger(settings) if converting and settings.ledger.enabled else None
    return Services(settings, storages, resolver, signer, revocations, renditions, admission, inspector, ledger)


def _ledger(settings: Settings) -> Ledger:
    """The listening ledger of this edge worker (the loader made sure a secret comes with the URLs)."""
    config = settings.ledger
    assert config.webhook_secret is not None
    delivery = Delivery(
        urls=config.webhook_urls,
        secret=config.webhook_secret.encode(),
        batch_size=config.webhook_batch_size,
        timeout=config.webhook_timeout,
        retry_seconds=config.webhook_retry_seconds,
        max_retry_seconds=config.webhook_max_retry_seconds,
    )
    return Ledger(
        directory=config.dir,
        shared_key=settings.keys[0],
        replica=socket.gethostname(),
        idle_seconds=config.session_idle_seconds,
        max_events=config.max_events,
        delivery=delivery,
    )
