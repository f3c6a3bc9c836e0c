"""The routes that keep devices and applications connected across regions: deep health, the
concierge, the presence directory, delivery to a device connected here, and the stream of
everything routed here (telemetry and lifecycle events) for the application SDK.

``/health`` and ``/v1/endpoints/<device>`` are open (health checkers and devices call them);
the rest need the admin token like every other admin route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.params import Depends
from fastapi.responses import JSONResponse, StreamingResponse

from geofleet.broker.base import Broker
from geofleet.domain.errors import Conflict, InvalidRequest, NotFound
from geofleet.domain.json_types import Json
from geofleet.domain.names import check_thing_name
from geofleet.domain.topics import TopicFilterIndex
from geofleet.region.concierge import Concierge
from geofleet.region.health import Health
from geofleet.services.presence import PresenceDirectory

STREAM_QUEUE = 10_000
"""Messages a slow stream reader may fall behind by before it is cut off (and reconnects)."""
MAX_TOPIC_LENGTH = 256


def directory_routes(region: str, guarded: list[Depends], health: Health, concierge: Concierge,
                     presence: PresenceDirectory, broker: Broker) -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["health"])
    async def get_health() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    @router.get("/v1/endpoints/{device}", tags=["failover"])
    async def get_endpoints(device: str) -> Json:
        check_thing_name(device)
        return concierge.endpoints(device)

    @router.get("/v1/presence", tags=["presence"], dependencies=guarded)
    async def list_presence(region_filter: Annotated[str | None, Query(alias="region")] = None) -> Json:
        sessions = presence.connected_devices(region_filter, health.down())
        return {"servedBy": region, "devices": [s.to_json() for s in sessions]}

    @router.get("/v1/presence/{device}", tags=["presence"], dependencies=guarded)
    async def get_presence(device: str) -> Json:
        check_thing_name(device)
        found = presence.whereabouts(device, health.down())
        if found.last is None:
            raise NotFound(f"device {device!r} has never connected to any region")
        return {**found.to_json(), "servedBy": region}

    @router.post("/v1/devices/{device}/messages", tags=["presence"], dependencies=guarded)
    async def send(device: str, request: Request, topic: str, qos: int = Query(1, ge=0, le=1)) -> Json:
        """Deliver to the device's live connection in this region (only there: no broadcast)."""
        check_thing_name(device)
        if not topic or len(topic) > MAX_TOPIC_LENGTH or "+" in topic or "#" in topic:
            raise InvalidRequest(f"topic must be 1-{MAX_TOPIC_LENGTH} characters without wildcards")
        payload = await request.body()
        connection = broker.connection(device)
        if connection is None or connection.internal:
            raise NotFound(f"device {device!r} is not connected to {region}")
        if not await broker.deliver(connection, topic, payload, qos):
            raise Conflict(f"device {device!r} is connected to {region} but not subscribed to {topic!r} "
                           "(or its policy denies iot:Receive)")
        return {"device": device, "region": region, "sessionId": connection.session_id, "delivered": True}

    @router.get("/v1/stream", tags=["presence"], dependencies=guarded)
    async def stream(topic_filter: Annotated[list[str] | None, Query(alias="filter")] = None
                     ) -> Response:
        """Newline-delimited JSON of every message routed here that matches a filter (default:
        ``#`` and ``$aws/events/#``), until the client goes away."""
        index = TopicFilterIndex()
        for item in topic_filter or ["#", "$aws/events/#"]:
            if not item or len(item) > MAX_TOPIC_LENGTH:
                raise InvalidRequest(f"filter must be 1-{MAX_TOPIC_LENGTH} characters")
            index.add(item)
        queue: asyncio.Queue[tuple[bytes, asyncio.Future[None] | None] | None] = asyncio.Queue(STREAM_QUEUE)
        loop = asyncio.get_running_loop()

        def listener(topic: str, payload: bytes) -> asyncio.Future[None] | None:
            if not index.match(topic):
                return None
            line = {"region": region, "topic": topic, "receivedMs": time.time_ns() // 1_000_000, **_encode(payload)}
            written = loop.create_future()
            try:
                queue.put_nowait((json.dumps(line, separators=(",", ":")).encode() + b"\n", written))
            except asyncio.QueueFull:
                untap()
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)
                return None
            return written

        untap = broker.tap(listener)

        async def lines() -> AsyncIterator[bytes]:
            try:
                yield json.dumps({"region": region, "stream": "open"}).encode() + b"\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), 5.0)
                    except TimeoutError:
                        yield b"\n"  # keep-alive: lets both ends notice a dead peer
                        continue
                    if item is None:
                        yield json.dumps({"region": region, "stream": "overflow"}).encode() + b"\n"
                        return
                    yield item[0]
                    if item[1] is not None and not item[1].done():
                        item[1].set_result(None)  # the line is written out: the device may have its PUBACK
            finally:
                with contextlib.suppress(ValueError):
                    untap()
                while not queue.empty():  # nobody will write these: release their publishers
                    left = queue.get_nowait()
                    if left is not None and left[1] is not None and not left[1].done():
                        left[1].set_result(None)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return router


def _encode(payload: bytes) -> Json:
    try:
        return {"payload": payload.decode()}
    except UnicodeDecodeError:
        return {"payloadBase64": base64.b64encode(payload).decode()}
