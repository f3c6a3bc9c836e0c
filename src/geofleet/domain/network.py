"""Which address a request really came from.

``X-Forwarded-For`` is believed only when the connection comes from a configured trusted proxy,
and only up to the first hop that is not itself a trusted proxy: a client cannot choose its own
location (and so its region) by sending the header itself.

A request may carry the header on several lines: a client can send its own (forged) line and a
proxy such as HAProxy then *adds another line* rather than extending the first one. The lines
are one chain in order (RFC 9110 §5.3), so they are joined before the trusted-proxy rule; reading
only the first line would believe whatever the client wrote.

Dual-stack sockets report IPv4 clients as IPv4-mapped IPv6 (``::ffff:1.2.3.4``): such addresses
are unwrapped, in the peer address and in the chain, so that IPv4 proxy networks and IPv4
geolocation data apply to them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def join_forwarded(lines: Iterable[str]) -> str | None:
    """All ``X-Forwarded-For`` header lines of a request as one comma-separated chain (None
    without any), oldest hop first, as the proxies appended them."""
    joined = ", ".join(line for line in lines if line.strip())
    return joined or None


def unmapped(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 form turned into plain IPv4; anything else as given."""
    parsed = _parse(address)
    return address if parsed is None else str(parsed)


def client_address(peer: str, forwarded_for: str | None, trusted: Iterable[Network]) -> str:
    trusted = list(trusted)
    peer = unmapped(peer)
    if not forwarded_for or not _within(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if _parse(hop) is None:
            return peer  # a malformed chain from our own proxy: believe only what we saw
        if not _within(hop, trusted):
            return unmapped(hop)
    return unmapped(hops[0]) if hops else peer


def _parse(address: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(address: str, networks: list[Network]) -> bool:
    ip = _parse(address)
    return ip is not None and any(ip in network for network in networks)
