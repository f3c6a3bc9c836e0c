"""A device's connection to the fleet, with failover and fail-back (asyncio).

The device holds its ordered endpoints (home first, from provisioning or the concierge) and
keeps exactly one MQTT session to one of them:

- it connects to the first endpoint the fleet reports usable (any, if it cannot ask);
- when the session is lost, or its region is reported unhealthy, it moves to the next
  endpoint after a random delay (so a region's devices do not all arrive at once), backing off
  exponentially, with full jitter, once every endpoint has failed;
- a silent (black-holed) region is noticed by MQTT keep-alive: no PINGRESP within the
  keep-alive ends the session;
- away from home, after ``min_stay_s`` it checks the home every ``failback_interval_s`` and
  moves back once the home is usable again;
- QoS 1 messages go through the outbox (``device.outbox``) and are sent again after every
  reconnect until acknowledged; incoming QoS 1 duplicates (same topic and payload within
  ``dedup_window_s``) are dropped;
- subscriptions are made again on every new session, and ``on_session`` callbacks (the shadow
  helper's resync) run after each.

Every socket has TCP_NODELAY: paho leaves Nagle's algorithm on, which was measured to stall a
QoS 1 round trip by 25 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
import httpx

from geofleet.device.bootstrap import Credentials
from geofleet.device.outbox import MemoryOutbox, Outbox
from geofleet.domain.dedup import RecentMessages
from geofleet.domain.errors import GeofleetError, InvalidRequest

log = logging.getLogger(__name__)

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
T = TypeVar("T")
Handler = Callable[[str, bytes], Awaitable[None] | None]
SessionHook = Callable[[], Awaitable[None]]


class NoEndpointAvailable(GeofleetError):
    status = 503
    code = "NoEndpointAvailable"


@dataclass(frozen=True, slots=True)
class Endpoint:
    region: str
    host: str
    port: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Endpoint:
        return cls(str(raw["region"]), str(raw["host"]), int(raw["port"]))


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    keepalive_s: int = 30
    """Silence after which the device gives a region up. The MQTT keep-alive is set to half of
    it: paho pings after one keep-alive without traffic from the broker and drops the session
    after one more, so a black-holed region is left within ``keepalive_s`` (plus a second)."""
    connect_timeout_s: float = 5.0
    first_retry_spread_s: float = 1.0
    """After losing a session, the first reconnect waits uniform(0, this): spreads a region's
    devices over a second instead of all at one instant."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    failback: bool = True
    min_stay_s: float = 60.0
    """Stay at least this long in a failover region before trying home again (avoids flapping)."""
    failback_interval_s: float = 10.0
    health_interval_s: float = 0.0
    """How often to ask the concierge whether the current region is still usable (0: never;
    a lost session is always noticed through MQTT)."""
    dedup_window_s: float = 60.0

    def backoff(self, failures: int) -> float:
        """Full-jitter exponential backoff (the AWS architecture blog's recommendation)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, failures - 1))
        return random.uniform(min(self.backoff_base_s / 4, ceiling), ceiling)


@dataclass
class Move:
    """One session start: where, when, and why."""

    region: str
    at: float
    reason: str
    first_ack_at: float | None = None
    """When the first QoS 1 message of this session was acknowledged: the device is working."""


@dataclass
class _Subscription:
    handler: Handler
    qos: int = 1


class _Leave(Exception):
    """Ends a session on purpose (fail-back, or the region reported unusable)."""

    def __init__(self, reason: str, go_home: bool) -> None:
        super().__init__(reason)
        self.go_home = go_home


class DeviceClient:
    """``async with DeviceClient(credentials) as device: await device.publish(...)``."""

    def __init__(self, device_id: str, cert_file: str, key_file: str, ca_file: str,
                 endpoints: Sequence[Endpoint | dict[str, Any]], *, concierge: Sequence[str] = (),
                 options: FailoverOptions | None = None, outbox: Outbox | None = None) -> None:
        self.device_id = device_id
        self.endpoints = [e if isinstance(e, Endpoint) else Endpoint.from_json(e) for e in endpoints]
        if not self.endpoints:
            raise InvalidRequest(f"device {device_id}: the endpoint list is empty; give at least one "
                                 "region's MQTT host and port")
        self.options = options or FailoverOptions()
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.concierge = list(concierge)
        self._tls = ssl.create_default_context(cafile=ca_file)
        self._tls.load_cert_chain(cert_file, key_file)
        self._http_tls = ssl.create_default_context(cafile=ca_file)
        self._subscriptions: dict[str, _Subscription] = {}
        self._on_session: list[SessionHook] = []
        self._recent = RecentMessages(4096, self.options.dedup_window_s)
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self.connected = asyncio.Event()
        self.region: str | None = None
        self.moves: list[Move] = []
        self.last_error: str | None = None
        self.attempts = 0
        """Connection attempts so far (each one to one endpoint)."""
        self.failback_checks = 0
        """Times the home was checked while away (see ``min_stay_s``)."""
        self.doing = "idle"
        """What the connection loop is doing now, for diagnostics."""
        self.dropped_qos0 = 0
        self._task: asyncio.Task[None] | None = None
        self._usable: dict[str, bool] = {}
        self._http: httpx.AsyncClient | None = None
        self._stray: set[asyncio.Future[Any]] = set()

    @classmethod
    def from_credentials(cls, credentials: Credentials, **kwargs: Any) -> DeviceClient:
        return cls(credentials.device_id, str(credentials.cert_file), str(credentials.key_file),
                   str(credentials.ca_file), credentials.endpoints, **kwargs)

    @property
    def home(self) -> str:
        return self.endpoints[0].region

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> DeviceClient:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await _cancel_all([task])
        self.connected.clear()
        self.region = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def wait_connected(self, timeout: float) -> str:
        """The region connected to; NoEndpointAvailable (with the last error) after ``timeout``."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            raise NoEndpointAvailable(f"device {self.device_id}: no endpoint accepted a connection within "
                                      f"{timeout:g} s (last error: {self.last_error})") from None
        assert self.region is not None
        return self.region

    # -- messages --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """QoS 1: queued in the outbox and sent (again after reconnects) until acknowledged.
        QoS 0: sent now if connected, else dropped (and counted in ``dropped_qos0``)."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        if qos == 1:
            self.outbox.put(topic, data)
            self._wake.set()
            return
        if qos != 0:
            raise InvalidRequest("qos must be 0 or 1 (AWS IoT does not support QoS 2)")
        client = self._client
        if client is None or not self.connected.is_set():
            self.dropped_qos0 += 1
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

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Kept for the life of the client: made again on every new session."""
        self._subscriptions[topic_filter] = _Subscription(handler, qos)
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await client.subscribe(topic_filter, qos=qos)

    def on_session(self, hook: SessionHook) -> None:
        """Run ``hook`` after every new session is set up (e.g. to resynchronise state)."""
        self._on_session.append(hook)

    async def send_now(self, topic: str, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1 on the current session, bypassing the outbox (for request/response
        exchanges that are retried at a higher level, like shadow updates)."""
        await asyncio.wait_for(self.connected.wait(), timeout)
        client = self._client
        if client is None:
            raise NoEndpointAvailable(f"device {self.device_id} is not connected")
        await client.publish(topic, payload, qos=1, timeout=timeout)

    # -- the connection loop ---------------------------------------------------------------

    async def _run(self) -> None:
        index, failures, reason = 0, 0, "start"
        while True:
            endpoint = self._pick(index)
            self.attempts += 1
            self.doing = f"connecting to {endpoint.region}"
            try:
                await self._session(endpoint, reason)
            except _Leave as leave:
                self._lost()
                reason = leave.args[0]
                index = 0 if leave.go_home else self.endpoints.index(endpoint) + 1
                failures = 0
                continue
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as exc:
                self.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.info("device %s: %s", self.device_id, self.last_error)
            except Exception as exc:  # a bug must not stop the device for good: log it, go on
                self.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.exception("device %s: session failed unexpectedly", self.device_id)
            was_connected = self.connected.is_set()
            self._lost()
            index = self.endpoints.index(endpoint) + 1
            if was_connected:
                failures, reason = 0, f"lost {endpoint.region}"
                await asyncio.sleep(random.uniform(0, self.options.first_retry_spread_s))
                await self._refresh_health()
                continue
            failures += 1
            reason = f"{endpoint.region} unreachable"
            if failures % len(self.endpoints) == 0:  # a whole round failed: back off
                await asyncio.sleep(self.options.backoff(failures // len(self.endpoints)))
                await self._refresh_health()
            else:
                await asyncio.sleep(random.uniform(0, self.options.backoff_base_s / 4))

    def _pick(self, index: int) -> Endpoint:
        return choose_endpoint(self.endpoints, index, self._usable)

    def _lost(self) -> None:
        self.connected.clear()
        self._client = None
        self.region = None

    async def _session(self, endpoint: Endpoint, reason: str) -> None:
        options = self.options
        client = aiomqtt.Client(endpoint.host, endpoint.port, identifier=self.device_id, tls_context=self._tls,
                                keepalive=max(1, options.keepalive_s // 2), timeout=options.connect_timeout_s,
                                clean_session=True, socket_options=NODELAY)
        async with _session_of(client, options.connect_timeout_s):
            for topic_filter, subscription in self._subscriptions.items():
                await client.subscribe(topic_filter, qos=subscription.qos, timeout=options.connect_timeout_s)
            self._client = client
            self.region = endpoint.region
            self.moves.append(Move(endpoint.region, time.time(), reason))
            self.connected.set()
            log.info("device %s connected to %s (%s)", self.device_id, endpoint.region, reason)
            tasks = [asyncio.create_task(self._read(client)), asyncio.create_task(self._drain(client)),
                     asyncio.create_task(self._after_session())]
            if endpoint.region != self.home and options.failback:
                tasks.append(asyncio.create_task(self._failback()))
            if options.health_interval_s > 0 and self.concierge:
                tasks.append(asyncio.create_task(self._watch_health(endpoint.region)))
            try:
                self.doing = f"in session with {endpoint.region}"
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                self.doing = f"ending the session with {endpoint.region}"
                for task in done:
                    task.result()  # re-raise what ended the session
                raise aiomqtt.MqttError("session ended")
            finally:
                await _cancel_all(tasks)
                self.doing = f"closing the connection to {endpoint.region}"
                self._client = None

    async def _after_session(self) -> None:
        for hook in self._on_session:
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
            for topic_filter, subscription in list(self._subscriptions.items()):
                if message.topic.matches(topic_filter):
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
                if self.moves[-1].first_ack_at is None:
                    self.moves[-1].first_ack_at = time.time()

    async def _failback(self) -> None:
        await asyncio.sleep(self.options.min_stay_s)
        home = self.endpoints[0]
        while True:
            self.failback_checks += 1
            self.doing = f"checking home {home.region}"
            if await self._home_usable(home):
                raise _Leave(f"fail-back to {home.region}", go_home=True)
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.options.failback_interval_s)

    async def _home_usable(self, home: Endpoint) -> bool:
        """The concierge's word, else whether a TLS handshake with the home's broker completes."""
        if self.concierge:
            await self._refresh_health()
            return self._usable.get(home.region, False)
        return await self._bounded(_tls_reachable(home, self._tls, self.options.connect_timeout_s), False)

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
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.options.health_interval_s)
            await self._refresh_health()
            if not self._usable.get(region, True) and any(self._usable.get(e.region) for e in self.endpoints):
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


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that did not: Python
    3.11's ``asyncio.wait_for`` swallows a cancellation that lands as its inner future completes
    (seen here: a PUBACK arriving as a session ended kept the sender looping, and the device
    stuck in that session for good)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


@contextlib.asynccontextmanager
async def _session_of(client: aiomqtt.Client, timeout: float) -> AsyncIterator[None]:
    """``async with client``, made safe for failover: aiomqtt leaves the socket open (and still
    read by the event loop) when CONNACK does not come in time, and waits without bound for a
    DISCONNECT to be written on leaving; here a failed connect and a leave that takes longer
    than ``timeout`` drop the socket, so no stray session of this client id survives."""
    try:
        await client.__aenter__()
    except BaseException:
        _drop_socket(client)
        raise
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), timeout)
        except asyncio.CancelledError:
            _drop_socket(client)
            raise
        except Exception:  # what ended the session (propagating now) matters more than this
            _drop_socket(client)


def _drop_socket(client: aiomqtt.Client) -> None:
    # paho has no public abort (``disconnect`` must write a packet first); its ``_sock_close``
    # runs aiomqtt's socket-close hook, which stops the event loop reading the socket.
    paho = client._client
    sock = paho.socket()
    if sock is None:
        return
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_writer(sock.fileno())
    with contextlib.suppress(Exception):
        paho._sock_close()


def choose_endpoint(endpoints: Sequence[Endpoint], index: int, usable: dict[str, bool]) -> Endpoint:
    """The endpoint at ``index`` (cyclic), skipping those the fleet reports unusable (a region
    not in ``usable`` counts as usable). When every one is reported unusable, the one at
    ``index`` anyway: the report may be stale, and trying (with backoff) beats giving up."""
    count = len(endpoints)
    for step in range(count):
        candidate = endpoints[(index + step) % count]
        if usable.get(candidate.region, True):
            return candidate
    return endpoints[index % count]


async def _tls_reachable(endpoint: Endpoint, tls: ssl.SSLContext, timeout: float) -> bool:
    """Whether a TLS handshake with the endpoint completes: a cheap sign of a live broker."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(
            endpoint.host, endpoint.port, ssl=tls, server_hostname=endpoint.host, ssl_handshake_timeout=timeout),
            2 * timeout)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.transport.abort()  # no TLS close_notify exchange: waiting for it can hang on a busy broker
    return True
