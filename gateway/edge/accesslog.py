"""Structured access log: one JSON line per edge request.

Never the whole token or the decrypted path: the token is cut to 8
characters, enough to find a link in support tickets, not to replay it.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("gateway.access")


def write(fields: dict[str, object]) -> None:
    """Emit one access line; `time` is added here, in UTC with milliseconds."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    log.info(json.dumps({"time": stamp, **fields}, separators=(",", ":")))
