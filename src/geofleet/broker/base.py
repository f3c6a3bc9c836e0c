"""The broker port.

The broker owns sockets, TLS and MQTT framing; the region owns every decision. The broker asks
its ``Gate`` whether a client may connect and whether each publish, subscribe and delivery is
allowed, and tells it about connections, disconnections and messages. The region drives the
broker back through ``publish`` and ``disconnect``. A second adapter (mosquitto) plugs in here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from geofleet.domain.policy import Action


class DisconnectReason(StrEnum):
    """AWS IoT's ``disconnectReason`` values for the lifecycle event."""

    CLIENT_INITIATED_DISCONNECT = "CLIENT_INITIATED_DISCONNECT"
    CLIENT_ERROR = "CLIENT_ERROR"
    """The client broke the protocol or a limit (an invalid topic, an oversized packet)."""
    CONNECTION_LOST = "CONNECTION_LOST"
    DUPLICATE_CLIENTID = "DUPLICATE_CLIENTID"
    FORBIDDEN_ACCESS = "FORBIDDEN_ACCESS"
    AUTH_ERROR = "AUTH_ERROR"
    MQTT_KEEP_ALIVE_TIMEOUT = "MQTT_KEEP_ALIVE_TIMEOUT"
    SERVER_INITIATED_DISCONNECT = "SERVER_INITIATED_DISCONNECT"


@dataclass(slots=True)
class Connection:
    """One admitted MQTT connection, as the region sees it."""

    client_id: str
    session_id: str
    certificate_id: str
    thing_name: str | None
    ip: str
    connected_ms: int
    reason: DisconnectReason | None = None
    """Set by whoever ends the connection on purpose, before it is closed."""
    internal: bool = False
    """The region's own health probe: no lifecycle events, no presence, one topic."""


Tap = Callable[[str, bytes], Awaitable[None] | None]
"""Sees every message the broker routes (topic, payload), devices' and the region's own. For a
device's QoS 1 publish, the PUBACK waits for what the tap returns (the message written out)."""


class Gate(Protocol):
    def admit(self, client_id: str, certificate_der: bytes | None, ip: str) -> Connection | None:
        """A Connection if this certificate may connect with this client id, else None."""
        ...

    def authorize(self, connection: Connection, action: Action, topic: str) -> bool: ...

    async def connected(self, connection: Connection) -> None: ...

    async def disconnected(self, connection: Connection) -> None: ...

    async def message(self, connection: Connection, topic: str, payload: bytes) -> None:
        """A permitted publish from a client (after the broker has routed it)."""
        ...


class Broker(Protocol):
    @property
    def port(self) -> int: ...

    async def start(self, gate: Gate) -> None: ...

    def trust(self, ca_pem: str) -> None:
        """Accept client certificates issued by this CA too, from the next handshake on."""
        ...

    async def stop(self) -> None: ...

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish as the service itself (shadow responses, lifecycle events); each subscriber
        gets it at min(qos, its subscription's QoS)."""
        ...

    async def deliver(self, connection: Connection, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Send to that one connection only (if it subscribed to the topic and may receive it):
        replies that carry one client's secrets, as AWS's fleet provisioning does."""
        ...

    async def disconnect(self, select: Callable[[Connection], bool], reason: DisconnectReason) -> int:
        """Close every live connection ``select`` picks; returns how many were closed."""
        ...

    def connections(self) -> list[Connection]: ...

    def connection(self, client_id: str) -> Connection | None:
        """The live connection of ``client_id`` here, if any."""
        ...

    def tap(self, listener: Tap) -> Callable[[], None]:
        """Call ``listener`` for every routed message until the returned function is called."""
        ...
