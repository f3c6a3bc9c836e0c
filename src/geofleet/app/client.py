"""The application side: find a device in the fleet and reach it, wherever it is connected.

``FleetApp`` talks to every region's admin API (HTTPS, the fleet's admin token):

- ``locate`` asks the nearest healthy region's presence directory (replicated, so any region
  knows every device); "nearest" is the lowest measured round trip, re-measured on failure;
- ``send`` delivers to the device's live session in the region where it is connected; when that
  region is unknown, unreachable or no longer holds the session (the device just failed over),
  it tries every region at once, and retries until ``timeout`` while the device reconnects.
  Exactly one region holds a device's session, so at most one delivers;
- ``get_shadow``/``update_shadow`` go to the nearest healthy region (shadows are replicated);
- a device with a residency scope (``geofleet:regions``) has its shadows and presence only in
  its scope's regions: a region outside answers ``WrongRegion`` (421) naming them, and every
  call about that device (``locate``, shadows, ``send``) follows to the nearest of those that
  answers, then goes there directly (the scope is remembered, bounded, and re-learned when a
  region says it moved);
- ``events`` merges every region's stream of telemetry and lifecycle events into one
  (``stream.py``): live, for dashboards;
- ``consumer`` reads every region's journal for a durable consumer (``consumer.py``): every
  matching message at least once, from where the application left off.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geofleet.app.consumer import Consumer
from geofleet.app.stream import EventStream, Region
from geofleet.domain import region_health
from geofleet.domain.errors import GeofleetError, InvalidRequest, NotFound, RegionUnreachable, answer
from geofleet.domain.json_types import Json
from geofleet.domain.lru import BoundedCache
from geofleet.domain.residency import Scope, WrongRegion

MAX_REDIRECTS = 3
"""How many ``WrongRegion`` answers one call follows (a scope that keeps moving is an error)."""
REMEMBERED_SCOPES = 4096
"""Devices whose residency scope the application remembers (least recently used go first)."""


class DeviceOffline(GeofleetError):
    """``send`` found no region holding the device's session before its timeout.

    Example::

        try:
            await app.send(device, f"cmd/{device}/reboot", "{}", timeout=30)
        except DeviceOffline as exc:
            print(exc)  # says where the device was last seen
    """

    status = 504
    code = "DeviceOffline"


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """Where a device is connected (``connected`` False: offline, ``last_seen`` says where): the
    application's copy of the presence directory's ``Whereabouts`` (``domain.geo.Location`` is
    something else: where a device's address places it on the map, for provisioning).

    Example::

        where = await app.locate("sensor-1")
        print(where.region if where.connected else where.last_seen)
    """

    device: str
    connected: bool
    region: str | None
    session_id: str | None
    answered_by: str
    last_seen: Json | None
    connected_at: str | None = None
    """When the current session began, ISO 8601 UTC (``2026-12-01T05:33:57.123Z``)."""

    @classmethod
    def from_json(cls, body: Json) -> Whereabouts:
        return cls(body["device"], bool(body["connected"]), body.get("region"), body.get("sessionId"),
                   body.get("servedBy", ""), body.get("lastSeen"), body.get("connectedAt"))


class FleetApp:
    """The application's handle on the whole fleet, through every region's admin API.

    Example::

        async with FleetApp(regions, token, Path("root-ca.pem")) as app:
            print(await app.locate("sensor-1"))
            await app.send("sensor-1", "cmd/sensor-1/reboot", "{}")
            async with app.events(["dt/+/telemetry"]) as stream:
                async for event in stream: ...
    """

    def __init__(self, regions: Sequence[Region], token: str, root_ca: Path, timeout: float = 5.0, *,
                 prefer: Sequence[str] = ()) -> None:
        """``prefer``: regions to call first while they are usable, in that order (an application
        running in one region asks its own); the others follow by round trip."""
        if not regions:
            raise InvalidRequest("no regions given: the application needs at least one region's URL")
        self.regions = list(regions)
        self._prefer = {name: i for i, name in enumerate(prefer)}
        self._by_name = {r.name: r for r in self.regions}
        self._http = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(root_ca)), timeout=timeout,
                                       headers={"Authorization": f"Bearer {token}"})
        self._ranked: list[Region] | None = None
        self._scopes: BoundedCache[str, list[str]] = BoundedCache(REMEMBERED_SCOPES)
        """Devices whose data rests in some regions only, and those regions (learned from answers)."""
        self.duplicates_dropped = 0
        """Events the merged stream dropped as already seen (a QoS 1 resend that reached two regions)."""

    async def __aenter__(self) -> FleetApp:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    # -- finding regions -------------------------------------------------------------------

    async def rank(self) -> list[Region]:
        """Usable regions, the preferred ones first, then nearest (lowest round trip to
        ``/health``) first: the node's own rule (``domain.region_health``) applied to what each
        region's ``/health`` answers now."""
        async def probe(region: Region) -> tuple[str, float, dict[str, Any] | None]:
            started = time.perf_counter()
            try:
                response = await self._http.get(f"{region.url}/health", timeout=2.0)
                report = response.json()
            except (httpx.HTTPError, ValueError):
                return region.name, 0.0, None
            return region.name, time.perf_counter() - started, report if isinstance(report, dict) else None

        answers = await asyncio.gather(*(probe(r) for r in self.regions))
        nearest = region_health.rank(answers)
        nearest.sort(key=lambda name: self._prefer.get(name, len(self._prefer)))  # stable: by round trip after
        self._ranked = [self._by_name[name] for name in nearest]
        return self._ranked

    async def _about(self, device: str, method: str, path: str, **kwargs: Any) -> Any:
        """A call about one device's data: to its scope's regions when known, else the nearest
        region; a ``WrongRegion`` answer names the regions to ask, and is followed (a few times:
        the scope may move while we follow it)."""
        regions = self._scopes.get(device)
        for _ in range(MAX_REDIRECTS):
            try:
                if regions is None:
                    return await self._nearest(method, path, **kwargs)
                return await self._among(regions, method, path, **kwargs)
            except WrongRegion as exc:
                if not exc.regions or exc.regions == regions:
                    raise
                regions = exc.regions
                self._scopes.put(device, regions)
        return await self._among(regions or [], method, path, **kwargs)

    async def _among(self, names: Sequence[str], method: str, path: str, **kwargs: Any) -> Any:
        """Call the nearest of the regions ``names`` that answers (ranked first, then the rest)."""
        ranked = self._ranked if self._ranked else await self.rank()
        listed = [r for r in ranked if r.name in names]
        listed += [self._by_name[n] for n in names if n in self._by_name and self._by_name[n] not in listed]
        if not listed:
            raise RegionUnreachable(f"the fleet says to ask {', '.join(names)}, and this application was not given "
                                    "any of those regions' URLs")
        errors: list[str] = []
        response = await self._first_answer(listed, method, path, errors, **kwargs)
        if response is not None:
            return answer(response)
        raise RegionUnreachable(f"none of {', '.join(names)} answered: " + "; ".join(errors))

    async def _first_answer(self, regions: Sequence[Region], method: str, path: str, errors: list[str],
                            **kwargs: Any) -> httpx.Response | None:
        """The first of ``regions`` to answer (any status); transport errors go to ``errors``."""
        for region in regions:
            try:
                return await self._http.request(method, f"{region.url}{path}", **kwargs)
            except httpx.HTTPError as exc:
                errors.append(f"{region.name}: {type(exc).__name__}")
        return None

    def _learn_scope(self, device: str, thing: Json) -> None:
        """Remember where a device's data rests, from its thing (as a region in scope answers it)."""
        scope = Scope.of_thing(thing)
        if scope.regions is not None and scope.regions != frozenset(r.name for r in self.regions):
            self._scopes.put(device, scope.listed())

    async def _nearest(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the nearest healthy region; on a transport error, re-rank and try the next."""
        ranked = self._ranked if self._ranked else await self.rank()
        errors: list[str] = []
        for attempt in range(2):
            response = await self._first_answer(ranked, method, path, errors, **kwargs)
            if response is not None:
                return answer(response)
            if attempt == 0:
                ranked = await self.rank()
        raise RegionUnreachable("no region answered: " + ("; ".join(errors) or "none is healthy"))

    # -- devices ---------------------------------------------------------------------------

    async def locate(self, device: str) -> Whereabouts:
        """Where ``device`` is connected now (``connected`` False when offline); NotFound for a
        device that has never connected, or that does not exist (the message says which)."""
        return Whereabouts.from_json(await self._about(device, "GET", f"/v1/presence/{device}"))

    async def send(self, device: str, topic: str, payload: bytes | str, *, qos: int = 1,
                   timeout: float = 10.0) -> str:
        """Deliver to the device's live session; returns the region that delivered it."""
        data = payload.encode() if isinstance(payload, str) else payload
        self._learn_scope(device, await self._about(device, "GET", f"/things/{device}"))  # NotFound: unknown
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "not connected anywhere"
        while True:
            try:
                where = await self.locate(device)
            except NotFound:
                where = None
            if where is not None and where.region in self._by_name:
                delivered = await self._deliver(self._by_name[where.region], device, topic, data, qos)
                if delivered:
                    return delivered
            scope = self._scopes.get(device)
            candidates = [r for r in self.regions if scope is None or r.name in scope]
            found = [r for r in await asyncio.gather(*(self._deliver(region, device, topic, data, qos)
                                                       for region in candidates)) if r]
            if found:
                return found[0]
            if where is not None and where.last_seen:
                last = f"last seen in {where.last_seen.get('region')}"
            if time.monotonic() + delay > deadline:
                raise DeviceOffline(f"device {device} is not connected to any region ({last}); "
                                    f"gave up after {timeout:g} s")
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def _deliver(self, region: Region, device: str, topic: str, data: bytes, qos: int) -> str | None:
        try:
            response = await self._http.post(f"{region.url}/v1/devices/{device}/messages",
                                             params={"topic": topic, "qos": qos}, content=data)
        except httpx.HTTPError:
            return None
        if response.status_code in (404, 421):  # not connected there; or it may not be there at all
            return None
        answer(response)  # anything else than 200, 404 or 421 is the caller's error: raise it
        return region.name

    async def get_shadow(self, device: str, name: str = "") -> Json:
        """The device's shadow (``name``: a named shadow), from a region that holds it."""
        return dict(await self._about(device, "GET", f"/things/{device}/shadow", params={"name": name}))

    async def update_shadow(self, device: str, document: Json, name: str = "") -> Json:
        """An AWS update document applied in a region that holds the shadow (it replicates from there)."""
        return dict(await self._about(device, "POST", f"/things/{device}/shadow", params={"name": name},
                                      json=document))

    async def delete_shadow(self, device: str, name: str = "") -> Json:
        """Delete the device's shadow, in a region that holds it."""
        return dict(await self._about(device, "DELETE", f"/things/{device}/shadow", params={"name": name}))

    # -- the merged stream -----------------------------------------------------------------

    def events(self, filters: Sequence[str] = ("#", "$aws/events/#"), ready_timeout: float = 10.0) -> EventStream:
        """Every region's telemetry and lifecycle events as one stream. Entering it returns once
        every healthy region's stream is open, so nothing published afterwards is missed
        (``RegionUnreachable`` after ``ready_timeout``).

        Example::

            async with app.events(["dt/+/telemetry"]) as stream:
                async for event in stream:
                    print(event.region, event.json())
        """
        return EventStream(self._http, self.regions, self.rank, filters, ready_timeout, self._count_duplicate)

    def consumer(self, name: str, filters: Sequence[str] | None = None, *, ready_timeout: float = 10.0,
                 commit_interval: float = 1.0) -> Consumer:
        """A durable consumer: every message published in any region whose topic matches its
        filters, at least once, from the offsets it committed in each region. With ``filters``
        the consumer is created (or its filters replaced); without, it must exist. Entering
        waits until every healthy region answered its offset (``RegionUnreachable`` after
        ``ready_timeout``); ``consumer.py`` says when offsets are committed.

        Example::

            async with app.consumer("billing", filters=["dt/+/usage"]) as consumer:
                async for message in consumer:
                    print(message.region, message.client_id, message.json())
        """
        return Consumer(self._http, self.regions, self._nearest, self.rank, name, filters, ready_timeout,
                        commit_interval)

    async def create_consumer(self, name: str, filters: Sequence[str]) -> Json:
        """Create a durable consumer (or replace its filters) without reading it yet: every region
        journals what matches from when it learns of it."""
        return dict(await self._nearest("PUT", f"/v1/consumers/{name}", json={"filters": list(filters)}))

    async def delete_consumer(self, name: str) -> None:
        """Delete a durable consumer (every region stops journaling for it, its offsets go)."""
        await self._nearest("DELETE", f"/v1/consumers/{name}")

    def _count_duplicate(self) -> None:
        self.duplicates_dropped += 1
