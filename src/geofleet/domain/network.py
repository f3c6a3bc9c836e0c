"""Which address a request really came from.

``X-Forwarded-For`` is believed only when the connection comes from a configured trusted proxy,
and only up to the first hop that is not itself a trusted proxy: a client cannot choose its own
location (and so its region) by sending the header itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[Network]) -> str:
    trusted = list(trusted)
    if not forwarded_for or not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed chain from our own proxy: believe only what we saw
        if not _within(hop, trusted):
            return hop
    return hops[0] if hops else peer


def _within(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
