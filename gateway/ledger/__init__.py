"""The listening ledger: who was sent which recording, when, and how much of it, told to the platform.

The edge hands every answer for a recording to `Ledger.record()` (an
`Access`: plain values, the token only to be fingerprinted). The ledger
turns them into `access` events and gathers the inline plays of one link by
one client into listening sessions, each closed into a `listen` event once
idle; it keeps every event in an outbox on local disk (`outbox`, SQLite)
until every webhook URL has acknowledged it, and delivers them signed and
in batches (`delivery`). It knows no HTTP framework, no storage and no
configuration: `gateway.services` builds it from the settings.
"""

from __future__ import annotations

from .audio import HEAD_BYTES, Layout, ReadAt, layout
from .delivery import Delivery
from .events import Access, Play, Record
from .recorder import Ledger

__all__ = ["HEAD_BYTES", "Access", "Delivery", "Layout", "Ledger", "Play", "ReadAt", "Record", "layout"]
