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
- a CONNECT is admitted (certificate ACTIVE, iot:Connect on the client id, the Last Will's
  topic allowed by iot:Publish and, if retained, iot:RetainPublish) *before* amqtt looks at the
  session stored under that client id: a refused client cannot disturb the real one
  (``admission.py``); a refusal is ``20 02 00 05`` (Session Present 0) and a close;
- AWS IoT's limits apply (``domain/limits.py``): packets above the payload limit are refused
  at the reader before they are buffered (``framing.py``), an invalid or oversized topic or
  payload closes the connection (CLIENT_ERROR), a too-long client id is refused with 0x02;
- a connection that sends no CONNECT within ``CONNECT_DEADLINE_S`` is closed, quietly;
- a publish the policy denies closes the connection (FORBIDDEN_ACCESS), as AWS IoT does; a
  retained publish needs iot:RetainPublish too;
- every delivery (live, retained on SUBSCRIBE, queued for a persistent session, Last Will,
  the region's own publishes) is checked against iot:Receive; a Last Will is routed like a
  live publish (application taps, the region's handlers);
- a QoS 1 PUBACK is sent once the message is routed and written to every application stream
  (amqtt acknowledges on receipt, so a crash could lose a message the device saw acknowledged);
- routing looks subscriptions up in a topic-filter trie (amqtt scans every filter for every
  message), and delivers at min(publish QoS, subscription QoS) as MQTT requires (amqtt uses the
  subscription's QoS, or forces the publisher's on every subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker as AmqttBroker
from amqtt.contexts import Action as AmqttAction
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.disconnect import DisconnectPacket

from geofleet.broker import admission
from geofleet.broker.base import Connection, DisconnectReason, Gate, Tap
from geofleet.broker.framing import BoundedReader
from geofleet.broker.handler import DeviceHandler, forget_traceback
from geofleet.domain.limits import (
    MAX_PACKET_BYTES,
    client_id_problem,
    payload_problem,
    topic_filter_problem,
    topic_name_problem,
)
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

    def __init__(self, host: str, port: int, chain: Path, key: Path, trust: Path,
                 connect_deadline_s: float = admission.CONNECT_DEADLINE_S) -> None:
        self._host, self._port = host, port
        self._connect_deadline_s = connect_deadline_s
        self._files = {"certfile": str(chain), "keyfile": str(key)}
        self._tls = server_tls_context(chain, key, trust)
        self._amqtt: _GatedAmqtt | None = None
        self._taps: list[Tap] = []

    @property
    def port(self) -> int:
        return self._port

    def trust(self, ca_pem: str) -> None:
        """Trust one more CA for client certificates (a customer CA registered for JITR), at
        once: the listener's SSLContext is this one object, and OpenSSL reads its store at each
        handshake. OpenSSL cannot take a CA out again: a CA's status is enforced at admission.

        A registered CA may be an intermediate (AWS registers those too): partial-chain
        verification lets a trusted intermediate anchor a chain without its root, which changes
        nothing for the fleet's own certificates (their intermediates are trusted already)."""
        self._tls.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self._tls.load_verify_locations(cadata=ca_pem)

    async def start(self, gate: Gate) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}", "ssl": True,
                                      **self._files}},
            "plugins": {},
        }
        self._amqtt = _GatedAmqtt(config, gate, self._tls, self._taps, self._connect_deadline_s)
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


class _GatedAmqtt(AmqttBroker):  # type: ignore[misc]
    def __init__(self, config: dict[str, Any], gate: Gate, tls: ssl.SSLContext, taps: list[Tap],
                 connect_deadline_s: float) -> None:
        super().__init__(config)
        self._taps = taps
        self._gate = gate
        self._tls = tls
        self._connect_deadline_s = connect_deadline_s
        self._closing: set[asyncio.Future[Any]] = set()
        """Fire-and-forget tasks kept referenced until done."""
        self._index = TopicFilterIndex()
        self.live: dict[str, tuple[Connection, DeviceHandler]] = {}
        """client id -> (connection, protocol handler) of every connection past CONNACK."""

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        return self._tls

    async def _create_server_instance(self, listener_name: str, listener_type: Any, address: str | None, port: int,
                                      ssl_context: ssl.SSLContext | None) -> asyncio.Server:
        """amqtt's TCP server, with a TLS handshake deadline (asyncio's default is 60 s)."""
        return await asyncio.start_server(
            functools.partial(self.stream_connected, listener_name=listener_name), address, port,
            reuse_address=True, ssl=ssl_context, ssl_handshake_timeout=self._connect_deadline_s)

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        try:
            await self._client_connected(listener_name,
                                         BoundedReader(StreamReaderAdapter(reader), MAX_PACKET_BYTES,
                                                       reader.exception),
                                         StreamWriterAdapter(writer))
        finally:
            forget_traceback(reader.exception())

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        """amqtt's connection lifecycle, with admission before any session is touched."""
        server = self._servers[listener_name]
        await server.acquire_connection()
        try:
            admitted = await self._admit(reader, writer)
            if admitted is None:
                return
            handler, session = admitted
            try:
                await self._handle_client_session(reader, writer, session, handler, server, listener_name)
            except (AMQTTError, MQTTError, NoDataError) as exc:
                log.info("session of %s ended on a protocol error: %s", session.client_id, exc)
            finally:
                handler.release()
        finally:
            server.release_connection()

    async def _admit(self, reader: Any, writer: Any) -> tuple[DeviceHandler, Any] | None:
        """Read the CONNECT and decide; only an admitted client reaches amqtt's sessions."""
        peer_info = writer.get_peer_info()
        ip, port = peer_info if peer_info is not None else ("", 0)
        read = await admission.read_connect(reader, writer, self.plugins_manager, self._connect_deadline_s,
                                            f"{ip}:{port}")
        if read is None:
            return None
        handler, incoming = read.handler, read.session
        client_id = incoming.client_id or ""
        tls = writer.get_ssl_info()
        incoming.ssl_object = None  # the certificate is read below; the session must not hold the TLS object
        problem = client_id_problem(client_id)
        if problem is not None:
            log.info("refused a CONNECT from %s: %s", ip, problem)
            await admission.refuse(writer, admission.REFUSED_IDENTIFIER)
            return None
        der = tls.getpeercert(binary_form=True) if tls is not None else None
        connection = self._gate.admit(client_id, der, ip)
        if connection is None:
            await admission.refuse(writer, admission.REFUSED_NOT_AUTHORIZED)
            return None
        problem = admission.will_problem(incoming)
        if problem is not None:  # a malformed CONNECT: close without CONNACK [MQTT-3.1.4-1]
            log.info("closed the connection of %s: its Last Will is invalid: %s", client_id, problem)
            await admission.close(writer)
            return None
        if incoming.will_flag and not self._may_publish(connection, incoming.will_topic, incoming.will_retain):
            log.info("refused %s: its policy does not allow its Last Will on %s%s", client_id, incoming.will_topic,
                     " (retained)" if incoming.will_retain else "")
            await admission.refuse(writer, admission.REFUSED_NOT_AUTHORIZED)
            return None
        session = await self._session_for(incoming)
        session.remote_address, session.remote_port = ip, port
        session.attributes[_KEY] = connection
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        handler.connection = connection
        handler.on_read_timeout = self._keepalive_expired
        return handler, session

    async def _session_for(self, incoming: Any) -> Any:
        """amqtt's session rules, for an admitted client: a clean session replaces whatever was
        stored; a persistent one resumes the stored session with this CONNECT's settings."""
        client_id = incoming.client_id
        stored = self._sessions.get(client_id)
        if incoming.clean_session or stored is None:
            if incoming.clean_session:
                await self._delete_session(client_id)
            incoming.parent = 0
            return incoming
        session = stored[0]
        for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                     "username", "password"):
            setattr(session, name, getattr(incoming, name))
        session.ssl_object = None
        session.parent = 1
        return session

    def _may_publish(self, connection: Connection, topic: str, retain: bool) -> bool:
        return self._gate.authorize(connection, Action.PUBLISH, topic) and \
            (not retain or self._gate.authorize(connection, Action.RETAIN_PUBLISH, topic))

    def _keepalive_expired(self, handler: DeviceHandler) -> None:
        if handler.connection is not None:
            handler.connection.reason = handler.connection.reason or DisconnectReason.MQTT_KEEP_ALIVE_TIMEOUT
        self._spawn(handler.handle_connection_closed())

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        """Admission already decided (``_admit``); here only the older connection with the same
        client id is closed, now that the new one is about to be acknowledged."""
        connection: Connection = session.attributes[_KEY]
        previous = self.live.get(connection.client_id)
        if previous is not None:
            previous[0].reason = DisconnectReason.DUPLICATE_CLIENTID
            await previous[1].handle_connection_closed()
        return True

    async def _client_message_loop(self, session: Any, handler: DeviceHandler) -> None:
        connection = handler.connection
        assert connection is not None, "a handler reaches its message loop only once admitted"
        self.live[connection.client_id] = (connection, handler)
        await self._gate.connected(connection)
        try:
            await super()._client_message_loop(session, handler)
        finally:
            if self.live.get(connection.client_id, (None, None))[1] is handler:
                del self.live[connection.client_id]
            violation = handler.reader.violation if isinstance(handler.reader, BoundedReader) else None
            if violation is not None and connection.reason is None:
                log.info("closed the connection of %s: %s", connection.client_id, violation)
                connection.reason = DisconnectReason.CLIENT_ERROR
            if connection.reason is None:
                connection.reason = DisconnectReason.CONNECTION_LOST
            await self._gate.disconnected(connection)

    async def _handle_disconnect(self, session: Any, handler: DeviceHandler, waiter: asyncio.Future[Any]) -> None:
        connection = handler.connection
        graceful = isinstance(waiter.result(), DisconnectPacket)
        if connection is not None and connection.reason is None and graceful:
            connection.reason = DisconnectReason.CLIENT_INITIATED_DISCONNECT
        will = None
        if not graceful and session.will_flag:  # routed below like a live publish, not by amqtt
            will = (session.will_topic, bytes(session.will_message or b""), session.will_qos or 0,
                    bool(session.will_retain))
        session.will_flag = False
        await super()._handle_disconnect(session, handler, waiter)
        if will is not None and connection is not None:
            await self._publish_will(session, connection, *will)

    async def _publish_will(self, session: Any, connection: Connection, topic: str, payload: bytes, qos: int,
                            retain: bool) -> None:
        if not self._may_publish(connection, topic, retain):  # the policy may have changed since CONNECT
            log.info("dropped the Last Will of %s on %s: its policy no longer allows it", connection.client_id, topic)
            return
        written = await self._route(session, connection, topic, payload, qos, retain)
        await _settle(written)

    async def _topic_filtering(self, session: Any, topic: str, action: AmqttAction) -> bool:
        connection: Connection | None = session.attributes.get(_KEY) if session is not None else None
        return connection is not None and self._gate.authorize(connection, _ACTIONS[action], topic)

    async def _handle_message_delivery(self, session: Any, handler: DeviceHandler,
                                       wait_deliver: asyncio.Future[Any]) -> bool:
        message = wait_deliver.result()
        connection = handler.connection
        if message is None or connection is None:
            return True
        problem = topic_name_problem(message.topic or "") or payload_problem(message.data or b"")
        if problem is not None:
            # [MQTT-4.8.0-1]: close the connection (and let the lifecycle event say so), not
            # just stop reading: amqtt's own path left the socket up, answering pings
            log.info("closed the connection of %s: invalid PUBLISH: %s", connection.client_id, problem)
            connection.reason = DisconnectReason.CLIENT_ERROR
            await handler.handle_connection_closed()
            return True
        retain = message.publish_packet is not None and bool(message.publish_packet.retain_flag)
        if not self._may_publish(connection, message.topic, retain):
            log.info("client %s may not publish%s to %s: disconnecting", connection.client_id,
                     " retained" if retain else "", message.topic)
            connection.reason = DisconnectReason.FORBIDDEN_ACCESS
            await handler.handle_connection_closed()
            return True
        written = await self._route(session, connection, message.topic, bytes(message.data), message.qos, retain)
        await _settle(written)
        await handler.acknowledge(message)
        return True

    async def _route(self, session: Any, connection: Connection, topic: str, payload: bytes, qos: int,
                     retain: bool) -> list[Awaitable[None]]:
        """What a device's publish (live or Last Will) does: application taps, subscribers,
        the retained store, the region's handlers. Returns the taps' pending writes."""
        written = [w for w in (tap(topic, payload) for tap in list(self._taps)) if w is not None]
        await self._broadcast_message(session, topic, payload, qos)
        if retain:
            await self.retain_message(session, topic, payload, qos)
        await self._gate.message(connection, topic, payload)
        return written

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        """Retained messages for one of the session's own subscriptions, each checked against
        iot:Receive (amqtt checks nothing, and after a reconnect walks *every* client's
        filters)."""
        topic_filter = subscription[0]
        granted = next((q for s, q in self._subscriptions.get(topic_filter, ()) if s is session), None)
        handler = self._get_handler(session)
        if granted is None or handler is None:
            return
        sends = [handler.mqtt_publish(r.topic, r.data, min(granted, r.qos if r.qos is not None else granted),
                                      retain=True)
                 for r in list(self._retained_messages.values())
                 if self._matches(r.topic, topic_filter)
                 and await self._topic_filtering(session, r.topic, AmqttAction.RECEIVE)]
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    async def _publish_session_retained_messages(self, session: Any) -> None:
        """Messages queued for a persistent session while it was away, checked against
        iot:Receive again: its policy may have changed meanwhile."""
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = []
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if await self._topic_filtering(session, queued.topic, AmqttAction.RECEIVE):
                sends.append(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    # -- routing ---------------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Any) -> int:
        problem = topic_filter_problem(subscription[0])
        if problem is not None:
            log.info("refused a subscription of %s: %s", session.client_id, problem)
            return 0x80
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
                    self._spawn(handler.mqtt_publish(topic, payload, min(qos, subscribed_qos), retain=False))
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


async def _settle(written: list[Awaitable[None]]) -> None:
    """Wait (bounded) for the application streams to take a device's message."""
    if written:
        with contextlib.suppress(TimeoutError):  # a stalled reader must not hold devices back
            await asyncio.wait_for(asyncio.gather(*written), TAP_WAIT_S)

