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

This module is the facade and the connection loop; the socket work of one session is in
``_session.py``, the decisions in ``geofleet.domain.failover``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt
import httpx

from geofleet.device._session import Endpoint, cancel_all, new_client, session_of, tls_reachable
from geofleet.device.bootstrap import Credentials
from geofleet.device.outbox import MemoryOutbox, Outbox
from geofleet.domain import failover
from geofleet.domain.dedup import RecentMessages
from geofleet.domain.errors import GeofleetError, InvalidRequest
from geofleet.domain.failover import FailoverOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[str, bytes], Awaitable[None] | None]
SessionHook = Callable[[], Awaitable[None]]


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
class Move:
    """One session start: where, when, and why.

    Example::

        for move in device.status.moves:
            print(move.region, move.reason)  # "eu-west-1", "lost us-east-1"
    """

    region: str
    at: float
    reason: str
    first_ack_at: float | None = None
    """When the first QoS 1 message of this session was acknowledged: the device is working."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message received on a subscription without a handler (see ``DeviceClient.messages``).

    Example::

        async for message in device.messages:
            print(message.topic, message.payload)
    """

    topic: str
    payload: bytes
    qos: int


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


@dataclass
class _Subscription:
    handler: Handler | None
    qos: int = 1


@dataclass
class _State:
    """What the loop changes; ``DeviceClient.status`` is its snapshot."""

    region: str | None = None
    moves: list[Move] = field(default_factory=list)
    attempts: int = 0
    failback_checks: int = 0
    doing: str = "idle"
    last_error: str | None = None
    dropped_qos0: int = 0


class _Leave(Exception):
    """Ends a session on purpose (fail-back, or the region reported unusable)."""

    def __init__(self, reason: str, go_home: bool) -> None:
        super().__init__(reason)
        self.go_home = go_home


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
        self._regions = [e.region for e in self.endpoints]
        self._tls = ssl.create_default_context(cafile=ca_file)
        self._tls.load_cert_chain(cert_file, key_file)
        self._http_tls = ssl.create_default_context(cafile=ca_file)
        self._subscriptions: dict[str, _Subscription] = {}
        self._on_session: list[SessionHook] = []
        self._recent = RecentMessages(4096, self.options.dedup_window_s)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._state = _State()
        self._task: asyncio.Task[None] | None = None
        self._usable: dict[str, bool] = {}
        self._http: httpx.AsyncClient | None = None
        self._stray: set[asyncio.Future[Any]] = set()

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
        state = self._state
        return DeviceStatus(state.region, self._connected.is_set(), tuple(state.moves), state.attempts,
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
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """End the session and the loop (``async with`` does it); the outbox keeps what is unsent."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_all([task])
        self._connected.clear()
        self._state.region = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def wait_connected(self, timeout: float) -> str:
        """The region connected to; NoEndpointAvailable (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise NoEndpointAvailable(f"device {self.device_id}: no endpoint accepted a connection within "
                                      f"{timeout:g} s (last error: {self._state.last_error})") from None
        assert self._state.region is not None
        return self._state.region

    # -- messages --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """QoS 1: queued in the outbox and sent (again after reconnects) until acknowledged.
        QoS 0: sent now if connected, else dropped (and counted in ``status.dropped_qos0``)."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if qos == 1:
            self.outbox.put(topic, data)
            self._wake.set()
            return
        if qos != 0:
            raise InvalidRequest("qos must be 0 or 1 (AWS IoT does not support QoS 2)")
        client = self._client
        if client is None or not self._connected.is_set():
            self._state.dropped_qos0 += 1
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
        self._subscriptions[topic_filter] = _Subscription(handler, qos)
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(topic_filter, qos=qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Forget a subscription (on the live session too)."""
        if self._subscriptions.pop(topic_filter, None) is None:
            return
        client = self._client
        if client is not None and self._connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.unsubscribe(topic_filter)

    @property
    def messages(self) -> AsyncIterator[Message]:
        """The messages of the subscriptions made without a handler, across sessions and
        failovers, QoS 1 duplicates dropped: ``async for message in device.messages: ...``."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._inbox.get()

    def on_session(self, hook: SessionHook) -> None:
        """Run ``hook`` after every new session is set up (e.g. to resynchronise state)."""
        self._on_session.append(hook)

    def remove_on_session(self, hook: SessionHook) -> None:
        """Undo ``on_session``."""
        with contextlib.suppress(ValueError):
            self._on_session.remove(hook)

    async def send_now(self, topic: str, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1 on the current session, bypassing the outbox (for request/response
        exchanges that are retried at a higher level, like shadow updates)."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        client = self._client
        if client is None:
            raise NoEndpointAvailable(f"device {self.device_id} is not connected")
        await client.publish(topic, payload, qos=1, timeout=timeout)

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        retry = failover.Retry(0, 0, "start", 0.0, False)
        while True:
            index = failover.choose(self._regions, retry.index, self._usable)
            endpoint = self.endpoints[index]
            self._state.attempts += 1
            self._state.doing = f"connecting to {endpoint.region}"
            try:
                await self._session(endpoint, retry.reason)
            except _Leave as leave:
                self._lost()
                retry = failover.after_leave(index, leave.args[0], leave.go_home)
                continue
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as exc:
                self._state.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.info("device %s: %s", self.device_id, self._state.last_error)
            except Exception as exc:  # a bug must not stop the device for good: log it, go on
                self._state.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.exception("device %s: session failed unexpectedly", self.device_id)
            was_connected = self._connected.is_set()
            self._lost()
            if was_connected:
                retry = failover.after_lost(self.options, index, endpoint.region)
            else:
                retry = failover.after_unreachable(self.options, len(self.endpoints), index, retry.failures,
                                                   endpoint.region)
            await asyncio.sleep(retry.delay_s)
            if retry.refresh_health:
                await self._refresh_health()

    def _lost(self) -> None:
        self._connected.clear()
        self._client = None
        self._state.region = None

    async def _session(self, endpoint: Endpoint, reason: str) -> None:
        options = self.options
        client = new_client(endpoint, self.device_id, self._tls, options.keepalive_s, options.connect_timeout_s)
        async with session_of(client, options.connect_timeout_s):
            for topic_filter, subscription in self._subscriptions.items():
                await client.subscribe(topic_filter, qos=subscription.qos, timeout=options.connect_timeout_s)
            self._client = client
            self._state.region = endpoint.region
            self._state.moves.append(Move(endpoint.region, time.time(), reason))
            self._connected.set()
            log.info("device %s connected to %s (%s)", self.device_id, endpoint.region, reason)
            tasks = [asyncio.create_task(self._read(client)), asyncio.create_task(self._drain(client)),
                     asyncio.create_task(self._after_session())]
            if endpoint.region != self.home and options.failback:
                tasks.append(asyncio.create_task(self._failback()))
            if options.health_interval_s > 0 and self.concierge:
                tasks.append(asyncio.create_task(self._watch_health(endpoint.region)))
            try:
                self._state.doing = f"in session with {endpoint.region}"
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                self._state.doing = f"ending the session with {endpoint.region}"
                for task in done:
                    task.result()  # re-raise what ended the session
                raise aiomqtt.MqttError("session ended")
            finally:
                await cancel_all(tasks)
                self._state.doing = f"closing the connection to {endpoint.region}"
                self._client = None

    async def _after_session(self) -> None:
        for hook in list(self._on_session):
            try:
                await hook()
            except Exception as exc:  # a hook's failure must not end the session
                log.warning("device %s: session hook failed: %s", self.device_id, exc)
        await asyncio.Event().wait()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            topic = message.topic.value
            if message.qos > 0 and self.options.dedup_window_s > 0 \
                    and not self._recent.first_time(topic, payload, time.monotonic()):
                continue
            queued = False
            for topic_filter, subscription in list(self._subscriptions.items()):
                if not message.topic.matches(topic_filter):
                    continue
                if subscription.handler is None:
                    if not queued:  # once, however many handler-less filters match
                        self._inbox.put_nowait(Message(topic, payload, message.qos))
                        queued = True
                    continue
                try:
                    result = subscription.handler(topic, payload)
                    if result is not None:
                        await result
                except Exception:  # the program's handler failed: the session goes on
                    log.exception("device %s: handler of %s failed", self.device_id, topic_filter)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            batch = self.outbox.pending()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            for message in batch:
                # no PUBACK within the keep-alive: the region is silent, leave it
                await client.publish(message.topic, message.payload, qos=1, timeout=self.options.keepalive_s)
                self.outbox.ack(message.id)
                moves = self._state.moves
                if moves[-1].first_ack_at is None:
                    moves[-1] = Move(moves[-1].region, moves[-1].at, moves[-1].reason, time.time())

    async def _failback(self) -> None:
        await asyncio.sleep(self.options.min_stay_s)
        home = self.endpoints[0]
        while True:
            self._state.failback_checks += 1
            self._state.doing = f"checking home {home.region}"
            if await self._home_usable(home):
                raise _Leave(f"fail-back to {home.region}", go_home=True)
            await asyncio.sleep(self.options.home_check_delay())

    async def _home_usable(self, home: Endpoint) -> bool:
        """The concierge's word, else whether a TLS handshake with the home's broker completes."""
        if self.concierge:
            await self._refresh_health()
            return self._usable.get(home.region, False)
        return await self._bounded(tls_reachable(home, self._tls, self.options.connect_timeout_s), False)

    async def _bounded(self, work: Awaitable[T], otherwise: T) -> T:
        """``work``, or ``otherwise`` after twice the connect timeout. The work runs as a task of
        its own, cancelled but not awaited when late: a TLS handshake cancelled mid-way was seen
        to hang (Python 3.11), and must never hold the device where it is."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=2 * self.options.connect_timeout_s)
        if task in done:
            return task.result()
        task.cancel()
        self._stray.add(task)  # referenced until it ends
        task.add_done_callback(self._stray.discard)
        return otherwise

    async def _watch_health(self, region: str) -> None:
        while True:
            await asyncio.sleep(self.options.health_check_delay())
            await self._refresh_health()
            if failover.should_leave(region, self._regions, self._usable):
                raise _Leave(f"{region} reported unusable", go_home=False)

    async def _refresh_health(self) -> None:
        """Ask the concierge (any region that answers) which endpoints are usable now."""
        if self.concierge:
            await self._bounded(self._ask_concierge(), None)

    async def _ask_concierge(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(verify=self._http_tls, timeout=self.options.connect_timeout_s)
        for url in self.concierge:
            try:
                response = await self._http.get(f"{url.rstrip('/')}/v1/endpoints/{self.device_id}")
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                self._usable = {e["region"]: bool(e["usable"]) for e in response.json()["endpoints"]}
                return
