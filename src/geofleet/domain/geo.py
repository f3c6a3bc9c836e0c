"""Where a device should live: great-circle distance, residency rules, health and weights.

Pure and deterministic so that every region (and later the AWS backend) answers the same
question the same way. ``choose_home`` returns every candidate in order (home first, then the
others by effective distance) together with the reasons, so a provisioning answer can say why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class Place:
    """A region's location."""

    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class Location:
    """What is known of where a device is; any part may be missing."""

    latitude: float | None = None
    longitude: float | None = None
    country: str | None = None
    """ISO 3166-1 alpha-2, upper case."""
    continent: str | None = None
    """Two-letter continent code: AF, AN, AS, EU, NA, OC, SA."""

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None


@dataclass(frozen=True, slots=True)
class Choice:
    home: str
    order: tuple[str, ...]
    """Home first, then every other allowed, healthy region by effective distance."""
    reasons: tuple[str, ...] = field(default=())
    permitted: tuple[str, ...] = ()
    """Home first, then every region the rules allow, healthy or not, by effective distance:
    the regions the device may fail over to."""


class NoRegionAllowed(ValueError):
    """Residency rules and health leave no region to choose."""


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def choose_home(
    location: Location,
    regions: Sequence[Place],
    *,
    default: str,
    residency: Mapping[str, Iterable[str]] | None = None,
    allowed: Iterable[str] | None = None,
    unhealthy: Iterable[str] = (),
    weights: Mapping[str, float] | None = None,
) -> Choice:
    """Pick a device's home region.

    ``residency`` maps a country code or a continent code to the regions a device there may
    live in (a country rule beats its continent's rule); ``allowed`` (e.g. an enrollment's) narrows
    further; unhealthy regions are skipped; a region's ``weight`` (default 1) divides its distance,
    so a weight of 2 makes a region count as half as far. Without coordinates the default region
    is the reference point.
    """
    reasons: list[str] = []
    candidates = [r.name for r in regions]
    rule_key, rule = _residency_rule(location, residency or {})
    if rule is not None:
        candidates = [c for c in candidates if c in rule]
        reasons.append(f"residency rule {rule_key}: {', '.join(sorted(rule))}")
    if allowed is not None:
        allowed_set = set(allowed)
        candidates = [c for c in candidates if c in allowed_set]
        reasons.append(f"enrollment allows: {', '.join(sorted(allowed_set))}")
    if not candidates:
        raise NoRegionAllowed("no configured region satisfies the residency rules: " + "; ".join(reasons))
    down = set(unhealthy)
    healthy = [c for c in candidates if c not in down]
    if not healthy:
        raise NoRegionAllowed(f"every allowed region is unhealthy: {', '.join(candidates)}")
    if len(healthy) < len(candidates):
        reasons.append(f"skipped unhealthy: {', '.join(c for c in candidates if c in down)}")
    places = {r.name: r for r in regions}
    if location.has_coordinates:
        origin = (float(location.latitude or 0.0), float(location.longitude or 0.0))
    else:
        reference = places.get(default) or places[healthy[0]]
        origin = (reference.latitude, reference.longitude)
        reasons.append(f"location unknown: measured from the default region {reference.name}")
    weights = weights or {}

    def effective(name: str) -> tuple[float, str]:
        km = distance_km(origin[0], origin[1], places[name].latitude, places[name].longitude)
        return km / max(weights.get(name, 1.0), 1e-9), name

    order = tuple(sorted(healthy, key=effective))
    if not location.has_coordinates and default in healthy:
        order = (default, *[n for n in order if n != default])
    home_km = distance_km(origin[0], origin[1], places[order[0]].latitude, places[order[0]].longitude)
    reasons.append(f"home {order[0]}: {home_km:.0f} km away")
    failover = sorted((c for c in candidates if c != order[0]), key=effective)
    return Choice(order[0], order, tuple(reasons), (order[0], *failover))


def _residency_rule(location: Location, rules: Mapping[str, Iterable[str]]) -> tuple[str, set[str] | None]:
    for key in (location.country, location.continent):
        if key and key.upper() in rules:
            return key.upper(), set(rules[key.upper()])
    return "", None
