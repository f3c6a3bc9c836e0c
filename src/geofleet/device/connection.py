"""A device's connection to the fleet, with failover and fail-back (asyncio).

The device holds its ordered endpoints (home first, from provisioning or the concierge) and
keeps exactly one MQTT session to one of them:

- it connects to the first endpoint the fleet reports usable (any, if it cannot ask);
- when the session is lost, or its region is reported unhealthy, it moves to the next
  endpoint after a random delay (so a region's devices do not all arrive at once), backing off
  exponentially, with full jitter, once every endpoint has failed (``domain/failover.py``);
- a silent (black-holed) region is noticed by MQTT keep-alive: no PINGRESP within the
  keep-alive ends the session;
- away from home, after ``min_stay_s`` it checks the home every ``failback_interval_s`` and
  moves back once the home is usable again;
- QoS 1 messages go through the outbox and are sent again after every reconnect until
  acknowledged; incoming QoS 1 duplicates (same topic and payload within ``dedup_window_s``) are
  dropped;
- subscriptions are made again on every new session, and ``on_session`` callbacks (the shadow
  helper's resync) run after each.

This module is the facade programs use; the connection loop is ``_loop.py``, the socket work
of one session ``_session.py``, the decisions ``geofleet.domain.failover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from geofleet.device._loop import Handler, Message, Move, SessionHook, SessionLoop, Subscription
from geofleet.device._session import cancel_all
from geofleet.device.bootstrap import Credentials
from geofleet.device.outbox import MemoryOutbox, Outbox
from geofleet.domain.endpoints import Endpoint
from geofleet.domain.errors import GeofleetError, InvalidRequest
from geofleet.domain.failover import FailoverOptions


class NoEndpointAvailable(GeofleetError):
    """No region accepted the device in time (``wait_connected``), or it is not connected.

    Example::

        try:
            await device.wait_connected(10)
        except NoEndpointAvailable as exc:
            print(exc)  # names the last error
    """

    status = 503
    code = "NoEndpointAvailable"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A read-only snapshot of the connection, for programs and diagnostics.

    Example::

        status = device.status
        if status.connected:
            print("in", status.region, "after", len(status.moves), "sessions")
    """

    region: str | None
    """The region of the live session (None between sessions)."""
    connected: bool
    moves: tuple[Move, ...]
    attempts: int
    """Connection attempts so far (each one to one endpoint)."""
    failback_checks: int
    """Times the home was checked while away (see ``min_stay_s``)."""
    doing: str
    """What the connection loop is doing now."""
    last_error: str | None
    dropped_qos0: int
    """QoS 0 messages published while not connected (QoS 0 is never queued)."""


class DeviceClient:
    """A device's connection to the fleet: one MQTT session at a time, failing over between the
    device's regions and coming home.

    Example::

        credentials = await bootstrap_async(device_id, key, group, urls, root_ca, out)
        async with DeviceClient.from_credentials(credentials) as device:
            await device.subscribe(f"cmd/{device_id}/#")
            await device.publish(f"dt/{device_id}/telemetry", '{"t": 21.5}')
            async for message in device.messages:
                print(message.topic, message.payload)
    """

    def __init__(self, device_id: str, cert_file: str, key_file: str, ca_file: str,
                 endpoints: Sequence[Endpoint | dict[str, Any]], *, concierge: Sequence[str] = (),
                 options: FailoverOptions | None = None, outbox: Outbox | None = None) -> None:
        self.device_id = device_id
        self.endpoints = tuple(e if isinstance(e, Endpoint) else Endpoint.from_json(e) for e in endpoints)
        if not self.endpoints:
            raise InvalidRequest(f"device {device_id}: the endpoint list is empty; give at least one "
                                 "region's MQTT host and port")
        self.options = options or FailoverOptions()
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        """Where QoS 1 messages wait for their PUBACK (``DiskOutbox`` survives a restart)."""
        self.concierge = tuple(concierge)
        tls = ssl.create_default_context(cafile=ca_file)
        tls.load_cert_chain(cert_file, key_file)
        self._loop = SessionLoop(device_id, self.endpoints, self.options, self.outbox, self.concierge, tls,
                                 ssl.create_default_context(cafile=ca_file))
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_credentials(cls, credentials: Credentials, **kwargs: Any) -> DeviceClient:
        """The client of a bootstrapped device (``kwargs``: ``options``, ``outbox``, ``concierge``)."""
        return cls(credentials.device_id, str(credentials.cert_file), str(credentials.key_file),
                   str(credentials.ca_file), credentials.endpoints, **kwargs)

    @property
    def home(self) -> str:
        """The home region: the first endpoint."""
        return self.endpoints[0].region

    @property
    def status(self) -> DeviceStatus:
        """Where the device is and what its connection loop has done, as of now."""
        state = self._loop.state
        return DeviceStatus(state.region, self._loop.connected.is_set(), tuple(state.moves), state.attempts,
                            state.failback_checks, state.doing, state.last_error, state.dropped_qos0)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceClient:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the connection loop (``async with`` does it); returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop.run())

    async def stop(self) -> None:
        """End the session and the loop (``async with`` does it); the outbox keeps what is unsent."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_all([task])
        await self._loop.close()

    async def wait_connected(self, timeout: float) -> str:
        """The region connected to; NoEndpointAvailable (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self._loop.connected.wait(), timeout)
        except TimeoutError:
            raise NoEndpointAvailable(f"device {self.device_id}: no endpoint accepted a connection within "
                                      f"{timeout:g} s (last error: {self._loop.state.last_error})") from None
        assert self._loop.state.region is not None
        return self._loop.state.region

    # -- messages --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """QoS 1: queued in the outbox and sent (again after reconnects) until acknowledged.
        QoS 0: sent now if connected, else dropped (and counted in ``status.dropped_qos0``)."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if qos == 1:
            self.outbox.put(topic, data)
            self._loop.wake.set()
            return
        if qos != 0:
            raise InvalidRequest("qos must be 0 or 1 (AWS IoT does not support QoS 2)")
        client = self._loop.client
        if client is None or not self._loop.connected.is_set():
            self._loop.state.dropped_qos0 += 1
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, data, qos=0)

    async def flush(self, timeout: float) -> None:
        """Wait until every queued QoS 1 message has been acknowledged."""
        deadline = time.monotonic() + timeout
        while len(self.outbox):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.outbox)} message(s) still unacknowledged after {timeout:g} s")
            await asyncio.sleep(0.01)

    async def subscribe(self, topic_filter: str, handler: Handler | None = None, qos: int = 1) -> None:
        """Kept for the life of the client: made again on every new session. Messages go to
        ``handler`` (called on the client's task; its failure is logged, the session goes on),
        or, without one, to ``messages``."""
        self._loop.subscriptions[topic_filter] = Subscription(handler, qos)
        client = self._loop.client
        if client is not None and self._loop.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(topic_filter, qos=qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Forget a subscription (on the live session too)."""
        if self._loop.subscriptions.pop(topic_filter, None) is None:
            return
        client = self._loop.client
        if client is not None and self._loop.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic_filter)

    @property
    def messages(self) -> AsyncIterator[Message]:
        """The messages of the subscriptions made without a handler, across sessions and
        failovers, QoS 1 duplicates dropped: ``async for message in device.messages: ...``."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._loop.inbox.get()

    def on_session(self, hook: SessionHook) -> None:
        """Run ``hook`` after every new session is set up (e.g. to resynchronise state)."""
        self._loop.hooks.append(hook)

    def remove_on_session(self, hook: SessionHook) -> None:
        """Undo ``on_session``."""
        with contextlib.suppress(ValueError):
            self._loop.hooks.remove(hook)

    async def send_now(self, topic: str, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1 on the current session, bypassing the outbox (for request/response
        exchanges that are retried at a higher level, like shadow updates)."""
        await asyncio.wait_for(self._loop.connected.wait(), timeout)
        client = self._loop.client
        if client is None:
            raise NoEndpointAvailable(f"device {self.device_id} is not connected")
        await client.publish(topic, payload, qos=1, timeout=timeout)
