"""amqtt's per-connection protocol handler, with geofleet's two behaviours as methods.

The broker used to graft these onto each handler as closures (``handler.x = lambda: ...``).
A closure that refers to the handler it is stored on is a reference cycle: every closed
connection (its TLS object, ~0.33 MB of native memory, included) then waited for the cyclic
garbage collector, and each full collection paused the event loop for 70-140 ms. Methods on a
subclass hold no such cycle, and the broker clears ``on_read_timeout`` when the connection ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING

from geofleet.broker.base import Connection, DisconnectReason
from geofleet.broker.framing import BoundedReader


class DeviceHandler(BrokerProtocolHandler):  # type: ignore[misc]
    def __init__(self, plugins_manager: Any, session: Any = None, loop: Any = None) -> None:
        super().__init__(plugins_manager, session, loop)
        self.connection: Connection | None = None
        """The admitted connection this handler serves (set before CONNACK)."""
        self.on_read_timeout: Callable[[DeviceHandler], None] | None = None
        self._unacked: set[int] = set()
        """ids of QoS 1 messages read from the device and not yet acknowledged."""

    def handle_read_timeout(self) -> None:
        if self.on_read_timeout is not None:
            self.on_read_timeout(self)

    async def handle_connect(self, connect: Any) -> None:
        """A second CONNECT on a connection is a protocol violation [MQTT-3.1.0-2]: close it
        (CLIENT_ERROR, as AWS IoT), without amqtt's ERROR log line per offence."""
        if self.connection is not None and self.connection.reason is None:
            self.connection.reason = DisconnectReason.CLIENT_ERROR
        await self.handle_connection_closed()

    async def _handle_qos1_message_flow(self, message: Any) -> None:
        """amqtt acknowledges an incoming QoS 1 publish as soon as it has read it; here the
        PUBACK waits until the message is routed (``acknowledge``), so a region that dies
        holding a message has not acknowledged it, and the device sends it again elsewhere."""
        if message.direction != INCOMING:
            await super()._handle_qos1_message_flow(message)
            return
        self._unacked.add(id(message))
        await self.session.delivered_message_queue.put(message)

    async def acknowledge(self, message: Any) -> None:
        """Send the PUBACK of a routed QoS 1 message (nothing for QoS 0)."""
        if message is not None and id(message) in self._unacked:
            self._unacked.discard(id(message))
            puback = PubackPacket.build(message.packet_id)
            await self._send_packet(puback)
            message.puback_packet = puback

    async def stop(self) -> None:
        await super().stop()
        if isinstance(self.reader, BoundedReader):
            forget_traceback(self.reader.stream_error())

    def release(self) -> None:
        """Drop what ties this finished handler to the broker."""
        self.on_read_timeout = None
        self._unacked.clear()


def forget_traceback(error: BaseException | None) -> None:
    """Drop the traceback of the error a connection ended with (a reset, mostly).

    asyncio keeps that error in the stream's close future, and ``wait_closed`` re-raises it
    inside amqtt's ``handler.stop`` (which logs and swallows it); the traceback then holds that
    frame, whose ``self`` is the handler, which holds the stream: a reference cycle, so every
    connection a device dropped (TLS object included) waited for the cyclic collector. The error
    itself is kept; only the frames go."""
    while error is not None:
        error.__traceback__ = None
        error = error.__context__
