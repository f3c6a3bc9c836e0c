"""``POST /v1/devices/<device>/messages``: deliver to a device's live session in this region.

A device whose residency scope leaves this region out is never connected here (admission refuses
it): 421 names the regions to ask rather than a 404 that would send the caller looking."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from geofleet.broker.base import Broker
from geofleet.domain.errors import Conflict, InvalidRequest, NotFound
from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.region.routes.params import Device
from geofleet.services.residency import Residency

MAX_TOPIC_LENGTH = 256


def router(region: str, broker: Broker, residency: Residency, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["presence"], dependencies=access.guard)

    @routes.post("/v1/devices/{device}/messages")
    async def send(device: Device, request: Request, topic: str, qos: int = Query(1, ge=0, le=1)) -> Json:
        """Deliver to the device's live connection in this region (only there: no broadcast)."""
        if not topic or len(topic) > MAX_TOPIC_LENGTH or "+" in topic or "#" in topic:
            raise InvalidRequest(f"topic must be 1-{MAX_TOPIC_LENGTH} characters without wildcards")
        residency.check_here(device)
        payload = await request.body()
        connection = broker.connection(device)
        if connection is None or connection.internal:
            raise NotFound(f"device {device!r} is not connected to {region}")
        if not await broker.deliver(connection, topic, payload, qos):
            raise Conflict(f"device {device!r} is connected to {region} but not subscribed to {topic!r} "
                           "(or its policy denies iot:Receive)")
        return {"device": device, "region": region, "sessionId": connection.session_id, "delivered": True}

    return routes
