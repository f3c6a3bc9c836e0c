"""Who is on the other end of a peer connection: the common name of its verified certificate.

The peer port demands a certificate of the region peer CA, but a request also *names* the region
it comes from (``?peer=``), and the server moves that region's acknowledgement with it. Without
tying the two, one region's certificate could pull as another region and move its position.

uvicorn does not put the client certificate in the ASGI scope, so ``PeerIdentityProtocol`` (its
h11 protocol, given to ``uvicorn.Config(http=...)``) reads it from the TLS transport once per
connection and hands it to every request of that connection in the scope's ``state``, where
``request.state`` finds it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from uvicorn.protocols.http.h11_impl import H11Protocol

from geofleet.replication.wire import BatchError

PEER_COMMON_NAME = "geofleet_peer_common_name"


class PeerIdentityProtocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app_state = {**self.app_state, PEER_COMMON_NAME: common_name(transport.get_extra_info("peercert"))}


def check_served_by(response: httpx.Response, peer: str) -> None:
    """The other direction: an answer counts as ``peer``'s only if the server's peer certificate is
    ``peer``'s (every region's certificate names the same loopback and shared host names, so the
    TLS host name check alone does not tell regions apart)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    served = common_name(ssl_object.getpeercert()) if ssl_object is not None else None
    if served != peer:
        raise BatchError(f"the server at {response.url.host}:{response.url.port} presented {served!r}'s peer "
                         f"certificate, not {peer!r}'s")


def common_name(peercert: Any) -> str | None:
    """The subject CN of a verified certificate as ``ssl`` decodes it (None without one)."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None
