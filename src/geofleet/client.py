"""A small client of a region's HTTP admin API, used by the CLI and by tests.

It verifies the region's server certificate against the fleet root, sends the admin token,
and turns error responses back into the same ``GeofleetError`` types the server raised.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from geofleet.config import DataDir
from geofleet.domain import errors

_BY_STATUS: dict[int, type[errors.GeofleetError]] = {
    400: errors.InvalidRequest, 401: errors.Unauthorized, 404: errors.NotFound, 409: errors.Conflict,
    413: errors.PayloadTooLarge,
}


class RegionUnreachable(errors.GeofleetError):
    status = 503
    code = "RegionUnreachable"


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


def answer(response: httpx.Response) -> Any:
    """The JSON body of a success; the ``GeofleetError`` the server raised otherwise."""
    if response.status_code >= 400:
        try:
            message = response.json().get("message", response.text)
        except ValueError:
            message = response.text
        error = _BY_STATUS.get(response.status_code, errors.GeofleetError)(str(message))
        error.status = response.status_code
        raise error
    return response.json() if response.content else None
