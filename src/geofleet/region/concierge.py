"""``GET /v1/endpoints/<device>``: where a device should connect, from any region.

The answer is the device's ordered endpoints with the health of each as this region sees it
(its own deep check, its peers' polled ones). A device asks any region it can reach; a DNS or
GSLB layer can ask too and answer with the first usable endpoint.
"""

from __future__ import annotations

from typing import Any

from geofleet.config import FleetConfig
from geofleet.domain.endpoints import (
    HOME_ATTRIBUTE,
    MODE_ATTRIBUTE,
    REGIONS_ATTRIBUTE,
    FailoverMode,
    endpoints,
    failover_order,
)
from geofleet.domain.geo import Place
from geofleet.domain.names import ThingName
from geofleet.services.region_health import RegionHealth
from geofleet.services.things import Things


class Concierge:
    def __init__(self, fleet: FleetConfig, region: str, things: Things, health: RegionHealth) -> None:
        self._region = region
        self._fleet = fleet
        self._things = things
        self._health = health
        self._places = [Place(r.name, r.latitude, r.longitude) for r in fleet.regions]
        self._addresses = {r.name: r.endpoint for r in fleet.regions}

    def endpoints(self, device: ThingName) -> dict[str, Any]:
        attributes = self._things.describe(device).get("attributes") or {}  # NotFound -> 404
        known = [r.name for r in self._fleet.regions]
        home = attributes.get(HOME_ATTRIBUTE) or self._fleet.home_default
        if home not in known:
            home = self._fleet.home_default
        permitted = [n for n in (attributes.get(REGIONS_ATTRIBUTE) or "").split(",") if n in known] or known
        mode = FailoverMode.parse(attributes.get(MODE_ATTRIBUTE) or self._fleet.failover_mode,
                                  f"thing {device!r}")
        order = failover_order(home, permitted, self._places)
        usable = {name: self._health.usable(name) for name in known}
        listed = endpoints(order, self._addresses, usable, mode, self._fleet.standby.get(home))
        return {"device": device, "homeRegion": home, "mode": mode.value, "servedBy": self._region,
                "endpoints": [e.to_json() for e in listed]}
