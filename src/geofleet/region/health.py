"""Deep health: is this region able to serve devices, and which of its peers are?

A process that answers HTTP may still have a broker that routes nothing or a store that no
longer writes, so ``/health`` checks the real paths:

- **broker**: a real MQTT client (TLS, its own certificate, made at start-up and signed by the
  region's CA) publishes a nonce at QoS 1 through the region's listener and must receive it back;
- **store**: a small durable write;
- **peers**: each peer's own deep health, polled every second over the peer channel.

The region is *healthy* when broker and store pass (HTTP 200); unreachable peers make it
*degraded* but still 200, since it serves its devices without them; a failing broker or store
gives 503, so a GSLB or a device's concierge moves traffic away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiomqtt

from geofleet.broker.base import Broker
from geofleet.config import RegionConfig
from geofleet.domain import region_health
from geofleet.domain.region_health import Observation
from geofleet.pki.ca import Authority, cert_pem, certificate_id, issue_leaf, key_pem, new_key
from geofleet.pki.files import write_private
from geofleet.store.base import Store

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 2.0
CACHE_S = 0.5
"""A burst of health requests shares one probe."""
PEER_INTERVAL_S = 1.0
PEER_TIMEOUT_S = 1.0


class ProbeIdentity(NamedTuple):
    """Who the health probe is on the broker: the gate admits this one internal client and lets
    it use only its own topic."""

    certificate_id: str
    client_id: str
    topic: str


class BrokerProbe:
    """The region's own MQTT client, used only for the loopback check."""

    def __init__(self, authority: Authority, region: RegionConfig, trust: Path, folder: Path) -> None:
        key = new_key()
        cert = issue_leaf(authority, key.public_key(), f"geofleet-probe-{region.name}", days=30)
        cert_file, key_file = folder / "probe.pem", folder / "probe.key.pem"
        write_private(key_file, key_pem(key))
        write_private(cert_file, cert_pem(cert) + cert_pem(authority.cert))
        self.certificate_id = certificate_id(cert)
        self.client_id = f"geofleet-probe-{region.name}-{secrets.token_hex(4)}"
        self.topic = f"$geofleet/probe/{region.name}"
        self._host, self._port = region.address, region.mqtt_port
        self._tls = ssl.create_default_context(cafile=str(trust))
        self._tls.load_cert_chain(str(cert_file), str(key_file))
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[bytes, asyncio.Future[None]] = {}

    @property
    def identity(self) -> ProbeIdentity:
        return ProbeIdentity(self.certificate_id, self.client_id, self.topic)

    async def check(self) -> None:
        """Publish a nonce and wait for it to come back; raises on any failure."""
        try:
            client = await self._connected()
            nonce = secrets.token_bytes(8)
            arrived = asyncio.get_running_loop().create_future()
            self._waiting[nonce] = arrived
            try:
                await client.publish(self.topic, nonce, qos=1, timeout=CHECK_TIMEOUT_S)
                await asyncio.wait_for(arrived, CHECK_TIMEOUT_S)
            finally:
                self._waiting.pop(nonce, None)
        except BaseException:
            await self.close()  # a fresh connection next time
            raise

    async def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            client = aiomqtt.Client(self._host, self._port, identifier=self.client_id, tls_context=self._tls,
                                    keepalive=30, timeout=CHECK_TIMEOUT_S,
                                    socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
            await client.__aenter__()
            self._client = client
            await client.subscribe(self.topic, qos=1, timeout=CHECK_TIMEOUT_S)
            self._reader = asyncio.create_task(self._read(client))
        return self._client

    async def _read(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                waiter = self._waiting.get(bytes(message.payload)) if isinstance(message.payload, bytes) else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        client, self._client = self._client, None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


@dataclass
class PeerView:
    """The latest poll of one peer; whether it is up is ``domain.region_health``'s call."""

    healthy: bool = False
    last_healthy: float | None = None
    last_error: str | None = None
    report: dict[str, Any] | None = None
    polled: bool = False

    @property
    def observation(self) -> Observation:
        return Observation(self.polled, self.healthy, self.last_healthy)

    def to_json(self, now: float) -> dict[str, Any]:
        return {"healthy": self.healthy, "lastError": self.last_error,
                "lastHealthyAgoS": None if self.last_healthy is None else round(now - self.last_healthy, 2)}


PeerGet = Callable[[str, str, float], Awaitable[dict[str, Any]]]
FailingLinks = Callable[[], dict[str, str]]


class Health:
    """This region's deep health and its view of its peers: the node's ``RegionHealth``, the one
    answer to "is region R up" for provisioning, presence and the concierge."""

    def __init__(self, region: str, store: Store, broker: Broker, probe: BrokerProbe, peers: list[str],
                 peer_get: PeerGet, failing_links: FailingLinks) -> None:
        """``failing_links``: replication links from peers that answer but cannot be pulled
        (peer -> error); the region still serves its devices, but it is missing their writes."""
        self._region = region
        self._failing_links = failing_links
        self._store = store
        self._broker = broker
        self._probe = probe
        self._peer_get = peer_get
        self.peers = {name: PeerView() for name in peers}
        self._started = time.time()
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def local(self) -> dict[str, Any]:
        """This region's own checks (broker loopback and store write), cached for ``CACHE_S``."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > CACHE_S:
                self._cached = (now, await self._check())
            return self._cached[1]

    async def _check(self) -> dict[str, Any]:
        checks = {"broker": await _timed(self._probe.check()), "store": await _timed(self._store_write())}
        healthy = all(c["ok"] for c in checks.values())
        return {"status": "ok" if healthy else "unhealthy", "region": self._region, "healthy": healthy,
                "uptimeSeconds": round(time.time() - self._started, 1),
                "connections": sum(1 for c in self._broker.connections() if not c.internal), "checks": checks}

    async def _store_write(self) -> None:
        self._store.probe(time.time_ns() // 1_000_000)

    async def report(self) -> dict[str, Any]:
        """What ``/health`` answers: the local checks plus each peer's health as seen from here."""
        local = dict(await self.local())
        now = time.monotonic()
        local["peers"] = {name: view.to_json(now) for name, view in self.peers.items()}
        failing = self._failing_links()
        local["replication"] = {name: {"failing": failing.get(name)} for name in self.peers}
        if local["healthy"] and (failing or not all(self.usable(name) for name in self.peers)):
            local["status"] = "degraded"
        return local

    def usable(self, region: str) -> bool:
        """This region by its own last check; a peer by ``region_health.usable`` on its polls."""
        if region == self._region:
            return self._cached is not None and region_health.report_is_healthy(self._cached[1])
        view = self.peers.get(region)
        return view is not None and region_health.usable(view.observation, time.monotonic())

    def down(self) -> frozenset[str]:
        """Peers asked and found not usable (a peer not yet polled is not down). This region is
        never in it: it serves its own requests and knows its own sessions."""
        now = time.monotonic()
        return frozenset(n for n, v in self.peers.items() if region_health.down(v.observation, now))

    def usable_map(self) -> dict[str, bool]:
        return {self._region: self.usable(self._region), **{n: self.usable(n) for n in self.peers}}

    # -- the peer poll ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.local()
        self._task = asyncio.create_task(self._poll_peers())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._probe.close()

    async def _poll_peers(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.gather(*(self._poll(name) for name in self.peers), self.local())
            await asyncio.sleep(max(0.0, PEER_INTERVAL_S - (time.monotonic() - started)))

    async def _poll(self, name: str) -> None:
        view = self.peers[name]
        try:
            report = await self._peer_get(name, "/v1/health", PEER_TIMEOUT_S)
        except Exception as exc:
            view.healthy, view.last_error, view.report = False, f"{type(exc).__name__}: {exc}"[:200], None
            view.polled = True
            return
        view.polled = True  # only once answered: a peer whose first poll is in flight is unknown, not down
        view.report = report
        view.healthy = region_health.report_is_healthy(report)
        view.last_error = None if view.healthy else f"reports {report.get('status')}"
        if view.healthy:
            view.last_healthy = time.monotonic()


async def _timed(work: Awaitable[None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(work, CHECK_TIMEOUT_S * 2)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
