"""Who sent a request: the peer address, looking through trusted proxies' X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

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
