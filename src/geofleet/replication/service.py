"""A region's replication: the peer server, one pull link per peer and stream, periodic
anti-entropy, and the status and metrics operators read."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from geofleet.config import DataDir, FleetConfig
from geofleet.domain.changelog import truncation_point
from geofleet.domain.errors import NotFound
from geofleet.domain.hlc import HLC
from geofleet.domain.horizon import TombstoneHorizon
from geofleet.replication.antientropy import differing_scoped
from geofleet.replication.apply import Applier
from geofleet.replication.link import Link, LinkStatus
from geofleet.replication.peer_identity import PeerIdentityProtocol, check_served_by
from geofleet.replication.scoping import PeerView
from geofleet.replication.server import ChangeFeed, ForwardReceiver, create_peer_app
from geofleet.replication.wire import BatchError, check_leaves, parse_digests, parse_hlc, parse_record
from geofleet.services.ledger import RecordMerger
from geofleet.services.residency import Residency
from geofleet.services.shadows import ShadowService
from geofleet.store.base import Store
from geofleet.web import EmbeddedServer

log = logging.getLogger(__name__)

ANTI_ENTROPY_INTERVAL_S = 30.0
STREAMS = ("priority", "all")
TRUNCATE_INTERVAL_S = 2.0
SYNC_SOON_S = 0.2


class Replication:
    def __init__(self, data: DataDir, fleet: FleetConfig, region: str, store: Store, records: RecordMerger,
                 shadows: ShadowService, residency: Residency, health: Callable[[], Awaitable[dict[str, Any]]],
                 horizon: TombstoneHorizon, forwards: ForwardReceiver | None = None) -> None:
        self.region = region
        self._store = store
        self._retention_s = fleet.changelog_retention_s
        self._tombstones = horizon
        self._applier = Applier(records, shadows, residency)
        self._view = PeerView(store, fleet.residency_global_attributes, region)
        self._sync_requested = asyncio.Event()
        residency.on_enter = lambda _device: self._sync_requested.set()  # its data comes by anti-entropy
        self.feed = ChangeFeed()
        store.on_change = self.feed.notify
        self.peers = {r.name: r for r in fleet.regions if r.name != region}
        self.status = {name: LinkStatus() for name in self.peers}
        self.acknowledged: dict[str, int] = {}
        """How far each peer has pulled this region's log (what it asked for last)."""
        self._resume = {name: asyncio.Event() for name in self.peers}
        for event in self._resume.values():
            event.set()
        paths = data.region(region)
        me = fleet.region(region)
        self._server = EmbeddedServer(uvicorn.Config(
            create_peer_app(region, set(self.peers), store, self._view, self.feed, self.acknowledged, health,
                            lambda: self.truncate(expired=False), forwards),
            host=me.host, port=me.peer_port, log_level="warning", lifespan="off", access_log=False,
            ssl_certfile=str(paths.peer_cert), ssl_keyfile=str(paths.peer_key), ssl_ca_certs=str(data.peer_ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED, timeout_graceful_shutdown=2, proxy_headers=False,
            http=PeerIdentityProtocol,  # puts the client certificate's CN in each request's state
        ))
        client_tls = ssl.create_default_context(cafile=str(data.peer_ca))
        client_tls.load_cert_chain(str(paths.peer_cert), str(paths.peer_key))
        # Links hold one long poll per peer and stream; requests (guard calls, anti-entropy) get a
        # pool of their own, so they never evict a link's connection (a fresh mutual-TLS handshake).
        self._http = httpx.AsyncClient(verify=client_tls, timeout=30.0,
                                       limits=httpx.Limits(max_connections=len(STREAMS) * max(1, len(self.peers)) + 2))
        self._calls = httpx.AsyncClient(verify=client_tls, timeout=10.0,
                                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics = CollectorRegistry()
        self._lag = Gauge("geofleet_replication_lag_seconds", "Write in the source region to apply here, last change",
                          ["source", "target"], registry=self._metrics)
        self._backlog = Gauge("geofleet_replication_backlog", "Changes of the source not yet applied here",
                              ["source", "target"], registry=self._metrics)
        self._parked = Gauge("geofleet_replication_parked", "Changes waiting for a dependency", ["region"],
                             registry=self._metrics)
        self._log_entries = Gauge("geofleet_changelog_entries", "Entries in the region's change log (not yet "
                                  "pulled by every peer)", ["region"], registry=self._metrics)

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._server.serve()))
        while not self._server.started:
            if self._tasks[0].done():
                raise RuntimeError(f"region {self.region}: peer port failed to open")
            await asyncio.sleep(0.01)
        for name, peer in self.peers.items():
            for stream in STREAMS:
                link = Link(self.region, name, peer.peer_url, stream, self._http, self._store, self._applier,
                            self.status[name], self._resume[name], functools.partial(self._sync_with, name))
                self._tasks.append(asyncio.create_task(link.run()))
        self._tasks.append(asyncio.create_task(self._anti_entropy_loop()))
        self._tasks.append(asyncio.create_task(self._truncate_loop()))

    async def stop(self) -> None:
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        self._server.should_exit = True
        self.feed.close()  # long-polling peers get their (empty) answer now
        await asyncio.gather(*self._tasks[:1], return_exceptions=True)
        await self._http.aclose()
        await self._calls.aclose()

    # -- operations ------------------------------------------------------------------------

    def pause(self, peer: str | None = None) -> None:
        """Stop applying changes from ``peer`` (every peer when None): a partition for drills."""
        for name in self._select(peer):
            self._resume[name].clear()
            self.status[name].paused = True

    def resume(self, peer: str | None = None) -> None:
        for name in self._select(peer):
            self._resume[name].set()
            self.status[name].paused = False

    def _select(self, peer: str | None) -> list[str]:
        if peer is not None and peer not in self.peers:
            raise NotFound(f"{peer!r} is not a peer of {self.region}; peers: {', '.join(self.peers)}")
        return [peer] if peer else list(self.peers)

    def report(self) -> dict[str, Any]:
        head, start = self._store.head(), self._store.log_start()
        return {"region": self.region, "head": head, "parked": self._store.parked(),
                "acknowledged": dict(self.acknowledged),
                "log": {"start": start, "entries": head - start, "retentionS": self._retention_s},
                "links": {name: status.to_json() for name, status in self.status.items()}}

    def failing_links(self) -> dict[str, str]:
        """Peers whose link the peer answers but cannot serve (an HTTP error, a bad batch), with
        the error: such a link stays stuck until someone acts, so health reports it."""
        return {name: fault for name, status in self.status.items()
                if not status.paused and (fault := status.peer_fault) is not None}

    def metrics(self) -> bytes:
        for name, status in self.status.items():
            self._lag.labels(name, self.region).set((status.lag_ms or 0.0) / 1000)
            self._backlog.labels(name, self.region).set(status.backlog)
        self._parked.labels(self.region).set(self._store.parked())
        self._log_entries.labels(self.region).set(self._store.head() - self._store.log_start())
        return bytes(generate_latest(self._metrics))

    async def call_peer(self, peer: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to a peer's API over the peer channel (mutual TLS with peer certificates)."""
        response = await self._calls.post(f"{self.peers[peer].peer_url}{path}", params={"peer": self.region},
                                          json=body, timeout=5.0)
        return _json(response, peer)

    async def get_peer(self, peer: str, path: str, timeout: float) -> dict[str, Any]:
        response = await self._calls.get(f"{self.peers[peer].peer_url}{path}", params={"peer": self.region},
                                         timeout=timeout)
        return _json(response, peer)

    # -- change log truncation -------------------------------------------------------------

    async def _truncate_loop(self) -> None:
        while True:
            await asyncio.sleep(TRUNCATE_INTERVAL_S)
            try:
                self.truncate(expired=True)
            except Exception:  # the loop must outlive any one bad round
                log.exception("change log truncation failed")

    def truncate(self, expired: bool) -> int:
        """Drop the log's prefix that every peer has pulled, and with ``expired`` (the periodic
        round; a peer's pull only looks at acknowledgements, a cheap delete) what is older than
        the retention."""
        through = self._store.log_expired_through(HLC(int((time.time() - self._retention_s) * 1000))) \
            if expired else 0
        point = truncation_point(self._store.head(), self.acknowledged, self.peers, through)
        if point <= self._store.log_start():
            return 0
        behind = sorted(name for name in self.peers if self.acknowledged.get(name, 0) < point)
        if behind:
            log.warning("change log of %s truncated through %d (older than %.0f s) before %s pulled it: "
                        "they will catch up by anti-entropy", self.region, point, self._retention_s,
                        ", ".join(behind))
        return self._store.truncate_log(point)

    # -- anti-entropy ----------------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        """A round every ~30 s, and soon after this region enters a device's residency scope."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_requested.wait(), ANTI_ENTROPY_INTERVAL_S * random.uniform(0.8, 1.2))
                await asyncio.sleep(SYNC_SOON_S)  # one round for a burst of scope changes
            self._sync_requested.clear()
            try:
                await self.sync()
            except Exception:  # the loop must outlive any one bad round
                log.exception("anti-entropy round failed")

    async def sync(self) -> dict[str, Any]:
        """Compare digests with every reachable, unpaused peer, pull what differs, and collect
        tombstones that every region is known to hold."""
        started = HLC(int(time.time() * 1000))
        horizon = self._tombstones.by_age()
        results: dict[str, Any] = {}
        for name in self.peers:
            if not self._resume[name].is_set():
                results[name] = {"skipped": "paused"}
                continue
            try:
                results[name] = await self._sync_with(name)
            except (httpx.HTTPError, BatchError, ValueError) as error:
                self.status[name].last_error = f"anti-entropy: {type(error).__name__}: {error}"
                results[name] = {"error": self.status[name].last_error}
        if all(r.get("differingBuckets") == 0 for r in results.values()) and \
                all(s.backlog == 0 for s in self.status.values()):
            self._store.mark_tombstones_seen(horizon, started)
            self._tombstones.agreed(started)  # shadows collect behind it
        collected = self._store.collect_tombstones(horizon)
        if collected:
            log.info("collected %d tombstone(s) every region had", collected)
        return results

    async def _sync_with(self, name: str) -> dict[str, Any]:
        url = self.peers[name].peer_url
        response = await self._calls.get(f"{url}/v1/digest", params={"peer": self.region})
        theirs = parse_digests(_json(response, name).get("scopes"), name)
        buckets = differing_scoped(self._store.bucket_digests(), theirs, self.region, name)
        publishes = []
        for scope, bucket in buckets:
            content = _json(await self._calls.get(f"{url}/v1/bucket/{bucket}",
                                                  params={"peer": self.region, "scope": scope}), name)
            records = [parse_record(r, f"record from {name}") for r in content.get("records", [])]
            shadows = content.get("shadows", [])
            with self._store.atomic():
                for record in records:
                    self._applier.record(record)
                for shadow in shadows:
                    leaves = shadow.get("leaves")
                    if not isinstance(leaves, dict) or not isinstance(shadow.get("key"), str):
                        raise BatchError(f"malformed shadow in bucket {bucket} from {name}")
                    check_leaves(leaves, f"shadow {shadow['key']} from {name}")
                    latest = max((parse_hlc(e[0], name) for e in leaves.values()), default=None)
                    if latest is not None and (publish := self._applier.shadow(shadow["key"], leaves, latest,
                                                                               name)) is not None:
                        publishes.append(publish)
        for publish in publishes:
            await publish()
        status = self.status[name]
        status.digests_agree = not buckets
        status.last_sync_ms = int(time.time() * 1000)
        if buckets:
            log.info("anti-entropy with %s: repaired %d bucket(s)", name, len(buckets))
        return {"differingBuckets": len(buckets)}


def _json(response: httpx.Response, peer: str) -> dict[str, Any]:
    check_served_by(response, peer)
    if response.status_code != 200:
        raise BatchError(f"{peer} answered HTTP {response.status_code}: {response.text[:200]}")
    data = response.json()
    if not isinstance(data, dict) or data.get("region") != peer:
        raise BatchError(f"answer from {peer} does not name {peer} as its region")
    return data
