"""``/v1/presence``: which devices are connected where, fleet-wide, as this region knows it.

Sessions in regions the health view reports down do not count: their devices cannot be
reached there, whatever the last replicated session says. A device's presence entries rest only in its
residency scope's regions: elsewhere ``/v1/presence/<device>`` answers 421 with the regions to
ask (the listing simply does not hold it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from geofleet.domain.errors import NotFound
from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.region.routes.params import Device
from geofleet.services.presence import PresenceDirectory
from geofleet.services.region_health import RegionHealth
from geofleet.services.residency import Residency
from geofleet.services.things import Things


def router(region: str, presence: PresenceDirectory, things: Things, residency: Residency, health: RegionHealth,
           access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["presence"], dependencies=access.guard)

    @routes.get("/v1/presence")
    async def list_presence(region_filter: Annotated[str | None, Query(alias="region")] = None) -> Json:
        sessions = presence.connected_devices(region_filter, health.down())
        return {"servedBy": region, "devices": [s.to_view() for s in sessions]}

    @routes.get("/v1/presence/{device}")
    async def get_presence(device: Device) -> Json:
        residency.check_here(device)
        found = presence.whereabouts(device, health.down())
        if found.last is None:
            if not things.exists(device):
                raise NotFound(f"no such device {device!r}: no thing of that name in the registry")
            raise NotFound(f"device {device!r} has never connected to any region")
        return {**found.to_json(), "servedBy": region}

    return routes
