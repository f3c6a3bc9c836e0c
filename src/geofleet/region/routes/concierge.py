"""``/v1/endpoints/<device>`` (open: devices ask it before they have a session anywhere): the
device's endpoints in failover order, each with whether it may be used now."""

from __future__ import annotations

from fastapi import APIRouter

from geofleet.domain.json_types import Json
from geofleet.region.concierge import Concierge
from geofleet.region.routes.params import Device


def router(concierge: Concierge) -> APIRouter:
    routes = APIRouter(tags=["failover"])

    @routes.get("/v1/endpoints/{device}")
    async def get_endpoints(device: Device) -> Json:
        return concierge.endpoints(device)

    return routes
