"""Link admission: everything the edge decides about a request before it touches bytes, written once.

In order: the signature and expiry (or strict mode's refusal of unsigned
links, and the refusal of a mask on any unsigned link), decoding and
decrypting the token (a masked link's with the keys for those), confining
its path, looking the file up across keys and storages, revocation, the
view asked for, and for a rendition or the listening page the probe of
what the file holds. The answer is either what to serve (`Admitted`) or
one `Refusal` with its status, reason and detail.

The edge serves from `admit()`; the link inspector (`/v1/links/resolve`,
`/v1/links/check`, `storage-gateway link decrypt`) reports from `trace()`,
which runs the very same steps and also keeps every fact it found on the
way (which key opened the link, whether the file exists, whether it is
revoked) even past the first refusal, so a report can say both "expired"
and "the file is there". The status it reports is the first refusal's,
exactly as the edge would answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..common.metrics import STORAGE_ERRORS, child
from ..storage import Storage, StorageUnavailable, StoredFile
from ..transcode.probe import Probe
from ..transcode.renditions import Rendition, Renditions
from ..transcode.spec import Refused
from .decision import Refusal, storage_failure
from .resolver import Candidate, Resolver, Unresolved, confined_paths
from .revocation import Revocations
from .signing import EXPIRED, SIGNATURE, UNSIGNED, LinkSigner, expiry
from .tokens import TokenError
from .views import MASK, View, view

log = logging.getLogger("gateway.edge")
REVOKED = Refusal(410, "revoked", "link or file revoked")
# A mask is a promise that the link never serves the original: only a signature can make it.
UNSIGNED_MASK = Refusal(403, "mask", "a mask on an unsigned link")


@dataclass(slots=True)
class Admitted:
    """A link to serve: the open file, where it was found, and what to send of it."""

    token: str
    signed: bool
    file: StoredFile
    path: str  # confined: 300/x.mp3
    storage: Storage
    view: View
    rendition: Rendition | None  # None: the original (or the page)
    recording: Probe | None = None  # for the listening page: what the file holds

    @property
    def name(self) -> str:
        """The download name: the signed `filename`, else the file's own."""
        return self.view.filename or self.path.rpartition("/")[2]

    @property
    def handoff(self) -> str | None:
        """Whether another server sends the bytes ("redirect", "accel"); a rendition or the page never is."""
        return None if self.rendition is not None or self.view.player else self.storage.handoff

    @property
    def status(self) -> int:
        """What a plain GET is answered with."""
        return 302 if self.handoff == "redirect" else 200


Decision = Admitted | Refusal


@dataclass(slots=True)
class Trace:
    """A decision with the facts found on the way, for the link inspector."""

    token: str
    params: Mapping[str, str]
    allowed: Callable[[str], bool] | None = None  # the caller may see only these confined paths
    decision: Decision | None = None
    signed: bool = False
    signature_valid: bool | None = None  # None: not signed
    expires_at: int | None = None
    candidates: tuple[Candidate, ...] = ()
    chosen: Candidate | None = None  # the reading of the token the facts are about
    exists: bool | None = False  # None: a storage failed, so it is not known
    file: StoredFile | None = None  # open until the inspector closes it
    storage: Storage | None = None
    revoked: bool = False
    # Nothing may be told about this link to this caller: it does not decode, its path
    # cannot be confined, or it lies outside `allowed`. The answer is then that for garbage.
    opaque: bool = False

    @property
    def status(self) -> int:
        assert self.decision is not None
        return self.decision.status

    async def close(self) -> None:
        if self.file is not None:
            await self.file.close()
            self.file = None


class Admission:
    def __init__(
        self,
        resolver: Resolver,
        signer: LinkSigner,
        revocations: Revocations,
        renditions: Renditions,
        require_signed: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.resolver = resolver
        self.signer = signer
        self.revocations = revocations
        self.renditions = renditions
        self.require_signed = require_signed
        self.clock = clock

    async def admit(self, token: str, params: Mapping[str, str]) -> Decision:
        """What the edge answers `/<token>?<params>` with; an `Admitted` file is the caller's to close."""
        return await self._decide(token, params, None)

    async def trace(self, token: str, params: Mapping[str, str], allowed: Callable[[str], bool] | None = None) -> Trace:
        """The same decision, with every fact found; the caller closes the trace (and its file)."""
        trace = Trace(token, params, allowed)
        trace.decision = await self._decide(token, params, trace)
        return trace

    async def _decide(self, token: str, params: Mapping[str, str], trace: Trace | None) -> Decision:
        signed = SIGNATURE in params
        masked = MASK in params
        first: Refusal | None = None
        if signed:
            first = self.signer.check(token, params, self.clock())
        elif self.require_signed:
            first = UNSIGNED
        elif masked:
            first = UNSIGNED_MASK
        if trace is not None:
            trace.signed = signed
            trace.signature_valid = (first is None or first is EXPIRED) if signed else None
            trace.expires_at = expiry(params) if signed else None
        elif first is not None:
            return first  # the edge decides this without decrypting anything

        try:
            # Only a signed link carries a mask: an unsigned one (refused above) is read as the legacy link it is.
            candidates = self.resolver.candidates(token, masked and signed)
        except TokenError as exc:
            if trace is not None:
                trace.opaque = True
            return first or Refusal(404, exc.reason, str(exc))
        paths = confined_paths(candidates)
        if trace is not None:
            trace.candidates = candidates
            visible = [path for path in paths if trace.allowed is None or trace.allowed(path)]
            trace.chosen = next((c for c in candidates if c.confined in visible[:1]), candidates[0])
            if not visible:
                trace.opaque = not paths or trace.allowed is not None
        if not paths:
            return first or Refusal(404, "path", next(c.refused for c in candidates if c.confined is None))
        if trace is not None and trace.opaque:
            return first or Refusal(404, "path", "outside the caller's prefix")

        try:
            file, path, storage = await self.resolver.lookup(paths)
        except Unresolved as exc:
            return first or Refusal(404, exc.reason, str(exc))
        except StorageUnavailable as exc:
            if trace is not None:
                trace.exists = None
            return first or storage_failure(exc.kind)
        if trace is not None:
            trace.chosen = next(c for c in candidates if c.confined == path)
            if trace.allowed is not None and not trace.allowed(path):
                await file.close()
                trace.opaque = True
                return first or Refusal(404, "path", "outside the caller's prefix")
            trace.exists, trace.file, trace.storage = True, file, storage

        try:
            decision = await self._serve(token, params, signed, first, file, path, storage, trace)
        except BaseException:
            if trace is None:
                await file.close()
            raise
        if trace is None and isinstance(decision, Refusal):
            await file.close()  # a trace keeps its file: the inspector reads facts from it
        return decision

    async def _serve(
        self,
        token: str,
        params: Mapping[str, str],
        signed: bool,
        first: Refusal | None,
        file: StoredFile,
        path: str,
        storage: Storage,
        trace: Trace | None,
    ) -> Decision:
        """The steps after the file is found: revocation, the view, the rendition or the page's recording."""
        revoked = self.revocations.revoked(token, path)
        if trace is not None:
            trace.revoked = revoked
        first = first or (REVOKED if revoked else None)
        if first is not None:
            return first
        wanted = view(params, signed, self.renditions.inline)
        if isinstance(wanted, Refusal):
            return wanted
        rendition = recording = None
        if wanted.rendition is not None or wanted.player:
            try:
                if wanted.rendition is not None:
                    rendition = await self.renditions.plan(file, storage.name, path, wanted.rendition)
                else:
                    recording = await self.renditions.recording(file, storage.name, path, wanted.channel)
            except Refused as exc:
                return Refusal(exc.status, exc.reason, exc.message, exc.message, exc.retry_after)
            except StorageUnavailable as exc:
                log.error("storage %s failed reading token=%s kind=%s: %s", storage.label, token[:8], exc.kind, exc)
                child(STORAGE_ERRORS, storage.label, exc.kind).inc()
                return storage_failure(exc.kind)
        return Admitted(token, signed, file, path, storage, wanted, rendition, recording)
