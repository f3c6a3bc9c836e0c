"""The device's connection loop (private to ``geofleet.device``): one MQTT session at a time,
and what happens when it ends.

``DeviceClient`` (the facade) owns one ``SessionLoop`` and runs ``run`` as a task; the loop
asks ``geofleet.domain.failover`` where to go next and how long to wait, and ``_session.py``
for the socket work. Between sessions it keeps the subscriptions, the session hooks and the
state that ``DeviceClient.status`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt
import httpx

from geofleet.device._session import cancel_all, new_client, session_of, tls_reachable
from geofleet.device.outbox import Outbox
from geofleet.domain import failover
from geofleet.domain.dedup import RecentMessages
from geofleet.domain.endpoints import Endpoint
from geofleet.domain.failover import FailoverOptions

log = logging.getLogger("geofleet.device.connection")

T = TypeVar("T")
Handler = Callable[[str, bytes], Awaitable[None] | None]
SessionHook = Callable[[], Awaitable[None]]


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


@dataclass
class Subscription:
    handler: Handler | None
    qos: int = 1


@dataclass
class State:
    """What the loop changes; ``DeviceClient.status`` is its snapshot."""

    region: str | None = None
    moves: list[Move] = field(default_factory=list)
    attempts: int = 0
    failback_checks: int = 0
    doing: str = "idle"
    last_error: str | None = None
    dropped_qos0: int = 0


class Leave(Exception):
    """Ends a session on purpose (fail-back, or the region reported unusable)."""

    def __init__(self, reason: str, go_home: bool) -> None:
        super().__init__(reason)
        self.go_home = go_home


class SessionLoop:
    """The connection loop and what it keeps between sessions (the facade reads and feeds it)."""

    def __init__(self, device_id: str, endpoints: Sequence[Endpoint], options: FailoverOptions, outbox: Outbox,
                 concierge: Sequence[str], tls: ssl.SSLContext, http_tls: ssl.SSLContext) -> None:
        self.device_id = device_id
        self.endpoints = tuple(endpoints)
        self.options = options
        self.outbox = outbox
        self.concierge = tuple(concierge)
        self._regions = [e.region for e in self.endpoints]
        self._tls = tls
        self._http_tls = http_tls
        self.subscriptions: dict[str, Subscription] = {}
        self.hooks: list[SessionHook] = []
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        """Messages of the subscriptions without a handler, for ``DeviceClient.messages``."""
        self.client: aiomqtt.Client | None = None
        """The live session's client (None between sessions)."""
        self.wake = asyncio.Event()
        """Set when the outbox has something new to send."""
        self.connected = asyncio.Event()
        self.state = State()
        self._recent = RecentMessages(4096, options.dedup_window_s)
        self._usable: dict[str, bool] = {}
        self._http: httpx.AsyncClient | None = None
        self._stray: set[asyncio.Future[Any]] = set()

    async def close(self) -> None:
        """After the loop's task ended: no session, no HTTP client left."""
        self.lost()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def run(self) -> None:
        retry = failover.Retry(0, 0, "start", 0.0, False)
        while True:
            index = failover.choose(self._regions, retry.index, self._usable)
            endpoint = self.endpoints[index]
            self.state.attempts += 1
            self.state.doing = f"connecting to {endpoint.region}"
            try:
                await self._session(endpoint, retry.reason)
            except Leave as leave:
                self.lost()
                retry = failover.after_leave(index, leave.args[0], leave.go_home)
                continue
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as exc:
                self.state.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.info("device %s: %s", self.device_id, self.state.last_error)
            except Exception as exc:  # a bug must not stop the device for good: log it, go on
                self.state.last_error = f"{endpoint.region}: {type(exc).__name__}: {exc}"
                log.exception("device %s: session failed unexpectedly", self.device_id)
            was_connected = self.connected.is_set()
            self.lost()
            if was_connected:
                retry = failover.after_lost(self.options, index, endpoint.region)
            else:
                retry = failover.after_unreachable(self.options, len(self.endpoints), index, retry.failures,
                                                   endpoint.region)
            await asyncio.sleep(retry.delay_s)
            if retry.refresh_health:
                await self._refresh_health()

    def lost(self) -> None:
        self.connected.clear()
        self.client = None
        self.state.region = None

    async def _session(self, endpoint: Endpoint, reason: str) -> None:
        options = self.options
        client = new_client(endpoint, self.device_id, self._tls, options.keepalive_s, options.connect_timeout_s)
        async with session_of(client, options.connect_timeout_s):
            for topic_filter, subscription in self.subscriptions.items():
                await client.subscribe(topic_filter, qos=subscription.qos, timeout=options.connect_timeout_s)
            self.client = client
            self.state.region = endpoint.region
            self.state.moves.append(Move(endpoint.region, time.time(), reason))
            self.connected.set()
            log.info("device %s connected to %s (%s)", self.device_id, endpoint.region, reason)
            tasks = [asyncio.create_task(self._read(client)), asyncio.create_task(self._drain(client)),
                     asyncio.create_task(self._after_session())]
            if endpoint.region != self.endpoints[0].region and options.failback:
                tasks.append(asyncio.create_task(self._failback()))
            if options.health_interval_s > 0 and self.concierge:
                tasks.append(asyncio.create_task(self._watch_health(endpoint.region)))
            try:
                self.state.doing = f"in session with {endpoint.region}"
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                self.state.doing = f"ending the session with {endpoint.region}"
                for task in done:
                    task.result()  # re-raise what ended the session
                raise aiomqtt.MqttError("session ended")
            finally:
                await cancel_all(tasks)
                self.state.doing = f"closing the connection to {endpoint.region}"
                self.client = None

    async def _after_session(self) -> None:
        for hook in list(self.hooks):
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
            for topic_filter, subscription in list(self.subscriptions.items()):
                if not message.topic.matches(topic_filter):
                    continue
                if subscription.handler is None:
                    if not queued:  # once, however many handler-less filters match
                        self.inbox.put_nowait(Message(topic, payload, message.qos))
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
                self.wake.clear()
                await self.wake.wait()
                continue
            for message in batch:
                # no PUBACK within the keep-alive: the region is silent, leave it
                await client.publish(message.topic, message.payload, qos=1, timeout=self.options.keepalive_s)
                self.outbox.ack(message.id)
                moves = self.state.moves
                if moves[-1].first_ack_at is None:
                    moves[-1] = Move(moves[-1].region, moves[-1].at, moves[-1].reason, time.time())

    async def _failback(self) -> None:
        await asyncio.sleep(self.options.min_stay_s)
        home = self.endpoints[0]
        while True:
            self.state.failback_checks += 1
            self.state.doing = f"checking home {home.region}"
            if await self._home_usable(home):
                raise Leave(f"fail-back to {home.region}", go_home=True)
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
                raise Leave(f"{region} reported unusable", go_home=False)

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
