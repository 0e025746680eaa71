"""Structured access log: one JSON line per edge request.

Never the whole token or the decrypted path: the token is cut to 8
characters, enough to find a link in support tickets, not to replay it.
The client address honours X-Forwarded-For only from configured proxies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Sequence

log = logging.getLogger("gateway.access")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """CIDRs or single addresses; raises ValueError naming the bad item."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in proxies)


def client_address(peer: str | None, forwarded_for: bytes | None, proxies: tuple[Network, ...]) -> str | None:
    """The address of whoever sent the request, looking through trusted proxies only.

    X-Forwarded-For is read from the right: each hop appends the address it
    saw, so the rightmost address not of a trusted proxy is the client; any
    address further left was written by the client itself and proves nothing.
    """
    if peer is None or forwarded_for is None or not _trusted(peer, proxies):
        return peer
    for hop in reversed(forwarded_for.decode("latin-1").split(",")):
        hop = hop.strip()
        if hop and not _trusted(hop, proxies):
            return hop
    return peer


def write(fields: dict[str, object]) -> None:
    """Emit one access line; `time` is added here, in UTC with milliseconds."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    log.info(json.dumps({"time": stamp, **fields}, separators=(",", ":")))
