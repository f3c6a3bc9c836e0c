"""The concierge's answer: a device's regions in the order it should try them, with health.

Two modes, per fleet or per device (the ``geofleet:failoverMode`` attribute, which an
enrollment group sets through its attributes):

- **active-active**: every permitted region takes the device; the home first, then the others
  nearest the home first. A device uses the first healthy one.
- **active-standby**: only the home and its standby are listed, and the standby is usable only
  while the home is unhealthy: it takes devices when the primary is down, never otherwise.

The permitted regions are those provisioning allowed (residency rules and the enrollment's
regions), recorded on the thing as ``geofleet:regions``; a device may never fail over into a
region the law keeps it out of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.geo import Place, distance_km

HOME_ATTRIBUTE = "geofleet:homeRegion"
REGIONS_ATTRIBUTE = "geofleet:regions"
MODE_ATTRIBUTE = "geofleet:failoverMode"


class FailoverMode(StrEnum):
    ACTIVE_ACTIVE = "active-active"
    ACTIVE_STANDBY = "active-standby"

    @classmethod
    def parse(cls, text: str, where: str) -> FailoverMode:
        try:
            return cls(text)
        except ValueError:
            raise InvalidRequest(f"{where}: failover mode must be 'active-active' or 'active-standby', "
                                 f"not {text!r}") from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A region's MQTT endpoint, as provisioning and the concierge give it: the one endpoint
    type of geofleet (the device SDK, provisioning and the concierge all use this one).

    Example::

        Endpoint("eu-west-1", "mqtt.eu-west-1.example.com", 8883)
    """

    region: str
    host: str
    port: int

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Endpoint:
        """From the provisioning answer's ``endpoints`` items (extra keys are ignored)."""
        return cls(str(raw["region"]), str(raw["host"]), int(raw["port"]))

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "host": self.host, "port": self.port}


@dataclass(frozen=True, slots=True)
class ListedEndpoint:
    """One line of the concierge's answer: an endpoint with its role and health as seen now."""

    endpoint: Endpoint
    role: str
    """``home``, ``failover`` (active-active) or ``standby`` (active-standby)."""
    healthy: bool
    usable: bool
    """Whether the device may connect here now."""

    @property
    def region(self) -> str:
        return self.endpoint.region

    def to_json(self) -> dict[str, Any]:
        return {**self.endpoint.to_json(), "role": self.role, "healthy": self.healthy, "usable": self.usable}


def failover_order(home: str, permitted: Sequence[str], places: Sequence[Place]) -> list[str]:
    """The home, then every other permitted region by distance from the home."""
    where = {p.name: p for p in places}
    if home not in where:
        raise InvalidRequest(f"home region {home!r} is not a region of this fleet")
    origin = where[home]
    others = [n for n in dict.fromkeys(permitted) if n != home and n in where]
    others.sort(key=lambda n: (distance_km(origin.latitude, origin.longitude, where[n].latitude,
                                           where[n].longitude), n))
    return [home, *others]


def endpoints(order: Sequence[str], addresses: Mapping[str, Endpoint], healthy: Mapping[str, bool],
              mode: FailoverMode, standby: str | None = None) -> list[ListedEndpoint]:
    """``order`` from ``failover_order``; ``standby`` overrides the home's standby (default: the
    nearest other permitted region)."""
    home = order[0]
    if mode is FailoverMode.ACTIVE_STANDBY:
        second = standby if standby and standby in order[1:] else (order[1] if len(order) > 1 else None)
        home_up = healthy.get(home, False)
        listed = [ListedEndpoint(addresses[home], "home", home_up, home_up)]
        if second is not None:
            up = healthy.get(second, False)
            listed.append(ListedEndpoint(addresses[second], "standby", up, up and not home_up))
        return listed
    return [ListedEndpoint(addresses[name], "home" if name == home else "failover", healthy.get(name, False),
                           healthy.get(name, False)) for name in order]
