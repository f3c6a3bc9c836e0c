"""The embedded broker: amqtt 0.12.1, adapted to AWS IoT's rules.

amqtt is a good embeddable MQTT 3.1.1 broker, but several of its defaults are wrong for a
device fleet; this adapter changes them by overriding the few broker methods involved (the
version is pinned, and tests cover each change):

- TLS requires a client certificate (amqtt hard-codes CERT_OPTIONAL);
- the certificate is read from *this* connection: amqtt keeps the TLS object of the first
  connection of a persistent session, so a reconnect would be judged by an old certificate;
- clients may publish to ``$aws/...`` topics (amqtt closes any client that publishes to ``$``);
- authorization runs synchronously through the Gate: amqtt's plugin path spawns a task per
  check and per subscriber, which is slow and lets subscriptions change under its iteration;
- a second connection with the same client id closes the first (DUPLICATE_CLIENTID), also for
  clean sessions, where amqtt would leave the old socket open;
- a client silent for 1.5 x its keep-alive is disconnected (amqtt never disconnects it);
- a publish the policy denies closes the connection (FORBIDDEN_ACCESS), as AWS IoT does;
- a QoS 1 PUBACK is sent once the message is routed and written to every application stream
  (amqtt acknowledges on receipt, so a crash could lose a message the device saw acknowledged);
- routing looks subscriptions up in a topic-filter trie (amqtt scans every filter for every
  message), and delivers at min(publish QoS, subscription QoS) as MQTT requires (amqtt uses the
  subscription's QoS, or forces the publisher's on every subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from amqtt.broker import Broker as AmqttBroker
from amqtt.contexts import Action as AmqttAction
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import INCOMING

from geofleet.broker.base import Connection, DisconnectReason, Gate, Tap
from geofleet.domain.policy import Action
from geofleet.domain.topics import TopicFilterIndex

log = logging.getLogger(__name__)

_ACTIONS = {
    AmqttAction.PUBLISH: Action.PUBLISH,
    AmqttAction.SUBSCRIBE: Action.SUBSCRIBE,
    AmqttAction.RECEIVE: Action.RECEIVE,
}
_KEY = "geofleet.connection"
TAP_WAIT_S = 2.0
"""How long a device's PUBACK waits for application streams to take its message."""


def server_tls_context(chain: Path, key: Path, trust: Path) -> ssl.SSLContext:
    """Mutual TLS for device-facing listeners: TLS 1.2+, a client certificate required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(trust))
    context.load_cert_chain(str(chain), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class EmbeddedBroker:
    """The Broker port on amqtt."""

    def __init__(self, host: str, port: int, chain: Path, key: Path, trust: Path) -> None:
        self._host, self._port = host, port
        self._files = {"certfile": str(chain), "keyfile": str(key)}
        self._tls = server_tls_context(chain, key, trust)
        self._amqtt: _GatedAmqtt | None = None
        self._taps: list[Tap] = []

    @property
    def port(self) -> int:
        return self._port

    async def start(self, gate: Gate) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}", "ssl": True,
                                      **self._files}},
            "plugins": {},
        }
        self._amqtt = _GatedAmqtt(config, gate, self._tls, self._taps)
        await self._amqtt.start()

    async def stop(self) -> None:
        if self._amqtt is not None:
            for connection, _ in list(self._amqtt.live.values()):
                connection.reason = connection.reason or DisconnectReason.SERVER_INITIATED_DISCONNECT
            await self._amqtt.shutdown()
            self._amqtt = None

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        assert self._amqtt is not None, "broker not started"
        await self._amqtt.internal_message_broadcast(topic, payload, qos)

    async def deliver(self, connection: Connection, topic: str, payload: bytes, qos: int = 1) -> bool:
        return self._amqtt is not None and await self._amqtt.deliver(connection, topic, payload, qos)

    async def disconnect(self, select: Callable[[Connection], bool], reason: DisconnectReason) -> int:
        if self._amqtt is None:
            return 0
        victims = [(c, h) for c, h in self._amqtt.live.values() if select(c)]
        for connection, handler in victims:
            connection.reason = reason
            await handler.handle_connection_closed()
        return len(victims)

    def connections(self) -> list[Connection]:
        return [] if self._amqtt is None else [c for c, _ in self._amqtt.live.values()]

    def connection(self, client_id: str) -> Connection | None:
        live = None if self._amqtt is None else self._amqtt.live.get(client_id)
        return None if live is None else live[0]

    def tap(self, listener: Tap) -> Callable[[], None]:
        self._taps.append(listener)
        return lambda: self._taps.remove(listener)


async def _acknowledge(handler: Any, message: Any) -> None:
    unacked: set[int] = getattr(handler, "geofleet_unacked", set())
    if message is not None and id(message) in unacked:
        unacked.discard(id(message))
        puback = PubackPacket.build(message.packet_id)
        await handler._send_packet(puback)
        message.puback_packet = puback


class _GatedAmqtt(AmqttBroker):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any], gate: Gate, tls: ssl.SSLContext, taps: list[Tap]) -> None:
        super().__init__(config)
        self._taps = taps
        self._gate = gate
        self._tls = tls
        self._closing: set[asyncio.Future[Any]] = set()
        """Fire-and-forget tasks kept referenced until done."""
        self._index = TopicFilterIndex()
        self.live: dict[str, tuple[Connection, Any]] = {}
        """client id -> (connection, protocol handler) of every connection past CONNACK."""

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        return self._tls

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        handler, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        session.ssl_object = writer.get_ssl_info()
        session.remote_address, session.remote_port = remote_address, remote_port
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        handler.handle_read_timeout = lambda: self._keepalive_expired(handler)
        handler._handle_qos1_message_flow = self._acknowledge_after_routing(handler)
        return handler, session

    def _acknowledge_after_routing(self, handler: Any) -> Callable[[Any], Awaitable[None]]:
        """amqtt acknowledges an incoming QoS 1 publish as soon as it has read it; here the
        PUBACK waits until the message is routed (``_handle_message_delivery``), so a region
        that dies holding a message has not acknowledged it, and the device sends it again
        elsewhere."""
        original = handler._handle_qos1_message_flow
        handler.geofleet_unacked = set()  # ids of messages read, not yet acknowledged

        async def flow(message: Any) -> None:
            if message.direction != INCOMING:
                await original(message)
                return
            handler.geofleet_unacked.add(id(message))
            await handler.session.delivered_message_queue.put(message)

        return flow

    def _keepalive_expired(self, handler: Any) -> None:
        for connection, live_handler in self.live.values():
            if live_handler is handler:
                connection.reason = connection.reason or DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT
        task = asyncio.ensure_future(handler.handle_connection_closed())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        tls = session.ssl_object
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        connection = self._gate.admit(session.client_id or "", der, session.remote_address or "")
        if connection is None:
            return False
        session.attributes[_KEY] = connection
        previous = self.live.get(connection.client_id)
        if previous is not None:
            previous[0].reason = DisconnectReason.DUPLICATE_CLIENTID
            await previous[1].handle_connection_closed()
        return True

    async def _client_message_loop(self, session: Any, handler: Any) -> None:
        connection: Connection = session.attributes[_KEY]
        self.live[connection.client_id] = (connection, handler)
        await self._gate.connected(connection)
        try:
            await super()._client_message_loop(session, handler)
        finally:
            if self.live.get(connection.client_id, (None, None))[1] is handler:
                del self.live[connection.client_id]
            if connection.reason is None:
                connection.reason = DisconnectReason.CONNECTION_LOST
            await self._gate.disconnected(connection)

    async def _handle_disconnect(self, session: Any, handler: Any, waiter: asyncio.Future[Any]) -> None:
        connection: Connection | None = session.attributes.get(_KEY)
        if connection is not None and connection.reason is None and isinstance(waiter.result(), DisconnectPacket):
            connection.reason = DisconnectReason.CLIENT_INITIATED_DISCONNECT
        await super()._handle_disconnect(session, handler, waiter)

    async def _topic_filtering(self, session: Any, topic: str, action: AmqttAction) -> bool:
        connection: Connection | None = session.attributes.get(_KEY) if session is not None else None
        return connection is not None and self._gate.authorize(connection, _ACTIONS[action], topic)

    async def _handle_message_delivery(self, session: Any, handler: Any, wait_deliver: asyncio.Future[Any]) -> bool:
        message = wait_deliver.result()
        connection: Connection | None = session.attributes.get(_KEY)
        if message is None or connection is None or not message.topic or "#" in message.topic \
                or "+" in message.topic:
            handled = bool(await super()._handle_message_delivery(session, handler, wait_deliver))
            await _acknowledge(handler, message)
            return handled
        if not self._gate.authorize(connection, Action.PUBLISH, message.topic):
            log.info("client %s may not publish to %s: disconnecting", connection.client_id, message.topic)
            connection.reason = DisconnectReason.FORBIDDEN_ACCESS
            await handler.handle_connection_closed()
            return True
        data = bytes(message.data)
        written = [w for w in (tap(message.topic, data) for tap in list(self._taps)) if w is not None]
        await self._broadcast_message(session, message.topic, message.data, message.qos)
        if message.publish_packet is not None and message.publish_packet.retain_flag:
            await self.retain_message(session, message.topic, message.data, message.qos)
        await self._gate.message(connection, message.topic, data)
        if written:
            with contextlib.suppress(TimeoutError):  # a stalled reader must not hold devices back
                await asyncio.wait_for(asyncio.gather(*written), TAP_WAIT_S)
        await _acknowledge(handler, message)
        return True



    # -- routing ---------------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        granted = int(await super().add_subscription(subscription, session))
        if subscription[0] in self._subscriptions:
            self._index.add(subscription[0])
        return granted

    async def _del_all_subscriptions(self, session: Any) -> None:
        filters = [f for f, subs in self._subscriptions.items() if any(s is session for s, _ in subs)]
        await super()._del_all_subscriptions(session)
        for topic_filter in filters:
            if topic_filter not in self._subscriptions:
                self._index.discard(topic_filter)

    async def deliver(self, connection: Connection, topic: str, payload: bytes, qos: int) -> bool:
        live = self.live.get(connection.client_id)
        if live is None or live[0] is not connection:
            return False
        handler = live[1]
        for topic_filter in self._index.match(topic):
            for target, subscribed_qos in self._subscriptions.get(topic_filter, ()):
                if target.client_id == connection.client_id and self._gate.authorize(connection, Action.RECEIVE,
                                                                                     topic):
                    task = asyncio.ensure_future(handler.mqtt_publish(topic, payload, min(qos, subscribed_qos),
                                                                      retain=False))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
                    return True
        return False

    async def _run_broadcast(self, running_tasks: Any) -> None:
        broadcast = await self._broadcast_queue.get()
        topic, data = broadcast["topic"], broadcast["data"]
        if broadcast.get("session") is None:  # the region's own messages; devices' were tapped on arrival
            for tap in list(self._taps):
                tap(topic, bytes(data))
        for topic_filter in self._index.match(topic):
            for target, subscribed_qos in list(self._subscriptions.get(topic_filter, ())):
                qos = min(broadcast.get("qos", subscribed_qos), subscribed_qos)
                if not await self._topic_filtering(target, topic, AmqttAction.RECEIVE):
                    continue
                if target.transitions.state != "connected":
                    # a persistent session keeps QoS 1+ messages until it comes back [MQTT-3.1.2.4]
                    if not target.clean_session and qos > 0 and not target.is_anonymous:
                        await self._retain_broadcast_message(broadcast, qos, target)
                    continue
                handler = self._get_handler(target)
                if handler is not None:
                    running_tasks.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False)))
