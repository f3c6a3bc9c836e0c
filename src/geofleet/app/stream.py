"""The merged stream of every region's telemetry and lifecycle events.

Each region serves its own stream (``/v1/stream``, one JSON line per message); the application
wants one. ``EventStream`` follows every region at once, reconnecting with backoff, and drops
duplicates (the same topic and payload within a window), since a QoS 1 message resent after a
failover may have reached two regions. Opening it waits until every healthy region's stream is
open, so nothing published afterwards is missed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from geofleet.domain.dedup import RecentMessages
from geofleet.domain.errors import GeofleetError, RegionUnreachable, answer

DEDUP_WINDOW = 10_000
STREAM_RETRY_MAX_S = 1.0
"""The longest wait between two attempts to open a region's stream (jittered by +-50 %)."""


@dataclass(frozen=True, slots=True)
class Region:
    """One region's admin API, as the application reaches it.

    Example::

        FleetApp([Region("eu-west-1", "https://eu.example.com:8443")], token, Path("root-ca.pem"))
    """

    name: str
    url: str


@dataclass(frozen=True, slots=True)
class Event:
    """One message of the merged stream: a device's telemetry or a lifecycle event.

    Example::

        async with app.events(["dt/+/telemetry"]) as stream:
            async for event in stream:
                print(event.region, event.topic, event.json())
    """

    region: str
    topic: str
    payload: bytes
    received_ms: int

    def json(self) -> Any:
        """The payload, parsed as JSON."""
        return json.loads(self.payload)


class EventStream:
    """Made by ``FleetApp.events``: ``async with`` opens every region's stream, ``async for``
    reads the merged events, leaving the block closes them.

    Example::

        async with app.events(["$aws/events/presence/+/+"]) as stream:
            async for event in stream:
                print(event.region, event.topic)
    """

    def __init__(self, http: httpx.AsyncClient, regions: Sequence[Region],
                 healthy: Callable[[], Awaitable[list[Region]]], filters: Sequence[str], ready_timeout: float,
                 on_duplicate: Callable[[], None]) -> None:
        self._http = http
        self._regions = list(regions)
        self._healthy = healthy
        self._filters = list(filters)
        self._ready_timeout = ready_timeout
        self._on_duplicate = on_duplicate
        self._queue: asyncio.Queue[Event] = asyncio.Queue(100_000)
        self._readers: list[asyncio.Task[None]] = []
        self._open: set[str] = set()

    @property
    def regions_open(self) -> frozenset[str]:
        """The regions whose stream is open now. A region's stream carries only what is
        published while it is open: a program (or test) that must see a message published in a
        region that just came back waits for that region here first."""
        return frozenset(self._open)

    async def __aenter__(self) -> EventStream:
        ready = {r.name: asyncio.Event() for r in self._regions}
        healthy = {r.name for r in await self._healthy()}
        self._readers = [asyncio.create_task(self._follow(r, ready[r.name])) for r in self._regions]
        try:
            await asyncio.wait_for(asyncio.gather(*(ready[n].wait() for n in healthy)), self._ready_timeout)
        except TimeoutError:
            await self.aclose()
            raise RegionUnreachable(f"the event streams of {', '.join(sorted(healthy))} did not open "
                                    f"within {self._ready_timeout:g} s") from None
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following the regions (``async with`` does it)."""
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._merged()

    async def _merged(self) -> AsyncIterator[Event]:
        recent = RecentMessages(DEDUP_WINDOW)
        while True:
            event = await self._queue.get()
            if not recent.first_time(event.topic, event.payload, time.monotonic()):
                self._on_duplicate()
                continue
            yield event

    async def _follow(self, region: Region, opened: asyncio.Event) -> None:
        delay = 0.2
        while True:
            try:
                async with self._http.stream("GET", f"{region.url}/v1/stream", params={"filter": self._filters},
                                             timeout=httpx.Timeout(5.0, read=15.0)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        answer(response)
                    delay = 0.2
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        item = json.loads(line)
                        if "topic" not in item:
                            if item.get("stream") == "open":
                                self._open.add(region.name)
                                opened.set()
                            continue
                        payload = item["payload"].encode() if "payload" in item \
                            else base64.b64decode(item["payloadBase64"])
                        await self._queue.put(Event(item["region"], item["topic"], payload, int(item["receivedMs"])))
            except (httpx.HTTPError, ValueError, GeofleetError):
                pass
            finally:
                self._open.discard(region.name)
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            # A region's stream carries only what is published while it is open, and devices go
            # home within seconds of their region coming back: retry often (one GET a second).
            delay = min(delay * 2, STREAM_RETRY_MAX_S)
