"""A small client of a region's HTTP admin API, used by the CLI and by tests.

It verifies the region's server certificate against the fleet root, sends the admin token,
and turns error responses back into the same ``GeofleetError`` types the server raised.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from geofleet.app import FleetApp, Region
from geofleet.config import DataDir
from geofleet.domain import errors
from geofleet.domain.errors import answer


@dataclass(frozen=True, slots=True)
class Listing:
    """How one paged route names its parts (AWS names them differently per API)."""

    path: str
    items: str
    size: str
    token: str
    next_token: str


THINGS = Listing("/things", "things", "maxResults", "nextToken", "nextToken")
CERTIFICATES = Listing("/certificates", "certificates", "pageSize", "marker", "nextMarker")


def named_shadows(thing: str) -> Listing:
    return Listing(f"/api/things/shadow/ListNamedShadowsForThing/{thing}", "results", "pageSize", "nextToken",
                   "nextToken")


class AdminClient:
    def __init__(self, data: DataDir, region: str, timeout: float = 10.0) -> None:
        self.region = data.config().region(region)
        self._http = httpx.Client(
            base_url=self.region.http_url,
            verify=ssl.create_default_context(cafile=str(data.root_ca)),
            headers={"Authorization": f"Bearer {data.token()}"},
            timeout=timeout,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.RegionUnreachable(
                f"region {self.region.name} at {self.region.http_url} did not answer ({exc.__class__.__name__}); "
                "is it running?"
            ) from None
        return answer(response)

    def page(self, listing: Listing, size: int | None = None, token: str | None = None) -> tuple[list[Any], str | None]:
        """One page of a listing: its items and the token of the next page (None after the last)."""
        params = {k: v for k, v in ((listing.size, size), (listing.token, token)) if v is not None}
        body = self.call("GET", listing.path, params=params)
        return list(body[listing.items]), body.get(listing.next_token)

    def every(self, listing: Listing, size: int | None = None) -> Iterator[Any]:
        """Every item of a listing, fetching page after page."""
        token: str | None = None
        while True:
            items, token = self.page(listing, size, token)
            yield from items
            if token is None:
                return


def fleet_app(root: Path, **kwargs: Any) -> FleetApp:
    """The application SDK for the fleet of a data directory (its regions, admin token and root
    CA), as the CLI and the drills use it; applications elsewhere pass those three themselves."""
    data = DataDir(root)
    regions = [Region(r.name, r.http_url) for r in data.config().regions]
    return FleetApp(regions, data.token(), data.root_ca, **kwargs)
