"""A small client of a region's HTTP admin API, used by the CLI and by tests.

It verifies the region's server certificate against the fleet root, sends the admin token,
and turns error responses back into the same ``GeofleetError`` types the server raised.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from geofleet.config import DataDir
from geofleet.domain import errors

_BY_STATUS: dict[int, type[errors.GeofleetError]] = {
    400: errors.InvalidRequest, 401: errors.Unauthorized, 404: errors.NotFound, 409: errors.Conflict,
    413: errors.PayloadTooLarge,
}


class RegionUnreachable(errors.GeofleetError):
    """No region answered (or a region's stream did not open in time).

    Example::

        try:
            await app.locate("sensor-1")
        except RegionUnreachable as exc:
            print(exc)  # names each region's error
    """

    status = 503
    code = "RegionUnreachable"


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
            raise RegionUnreachable(
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


def answer(response: httpx.Response) -> Any:
    """The JSON body of a success; the ``GeofleetError`` the server raised otherwise."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        # Every geofleet error is {"code", "message"}; anything else (a proxy's page) is shown as sent.
        message = body.get("message", response.text) if isinstance(body, dict) else response.text
        error = _BY_STATUS.get(response.status_code, errors.GeofleetError)(str(message))
        error.status = response.status_code
        raise error
    return response.json() if response.content else None
