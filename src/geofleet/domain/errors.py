"""Errors a user can act on.

Each error carries an HTTP-style ``status`` and a message that says what was wrong and, where it
helps, what to do. The HTTP API turns them into responses, the MQTT shadow service into
``/rejected`` messages, and the CLI into a message and an exit code.
"""

from __future__ import annotations

from typing import Any, Protocol


class GeofleetError(Exception):
    """Base of every error geofleet raises on purpose."""

    status = 400
    code = "BadRequest"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(GeofleetError):
    status = 400
    code = "InvalidRequest"


class NotFound(GeofleetError):
    status = 404
    code = "ResourceNotFound"


class Conflict(GeofleetError):
    status = 409
    code = "Conflict"


class PayloadTooLarge(GeofleetError):
    status = 413
    code = "PayloadTooLarge"


class Unauthorized(GeofleetError):
    status = 401
    code = "Unauthorized"


class ConfigError(GeofleetError):
    """The fleet configuration or data directory is missing or inconsistent."""

    status = 500
    code = "ConfigError"


class RegionUnreachable(GeofleetError):
    """No region answered (or a region's stream did not open in time).

    Example::

        try:
            await app.locate("sensor-1")
        except RegionUnreachable as exc:
            print(exc)  # names each region's error
    """

    status = 503
    code = "RegionUnreachable"


_BY_STATUS: dict[int, type[GeofleetError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
}


class HttpAnswer(Protocol):
    """What ``answer`` reads of an HTTP response (httpx's ``Response`` has it)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    def json(self) -> Any: ...


def answer(response: HttpAnswer) -> Any:
    """The JSON body of a success; otherwise the ``GeofleetError`` the server raised, rebuilt
    from its answer, so that clients catch the same types the server raised. Every geofleet
    error is ``{"code", "message"}``; anything else (a proxy's page) is shown as sent."""
    if response.status_code < 400:
        return response.json() if response.content else None
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message", response.text) if isinstance(body, dict) else response.text
    if response.status_code == 421 and isinstance(body, dict):
        raise _wrong_region(str(message), body.get("regions"))
    error = _BY_STATUS.get(response.status_code, GeofleetError)(str(message))
    error.status = response.status_code
    raise error


MAX_NAMED_REGIONS = 64
"""At most this many regions are read from a 421 answer (a fleet has a handful)."""
MAX_REGION_NAME = 64


def _wrong_region(message: str, regions: Any) -> GeofleetError:
    """A 421 answer as ``WrongRegion`` with the regions it names (only well-formed names, at most
    ``MAX_NAMED_REGIONS``: whoever follows them must not be sent anywhere by a malformed answer)."""
    # Imported here: residency's WrongRegion builds on this module's GeofleetError.
    from geofleet.domain.residency import WrongRegion

    named = [r for r in regions if isinstance(r, str) and 0 < len(r) <= MAX_REGION_NAME] \
        if isinstance(regions, list) else []
    return WrongRegion(message, list(dict.fromkeys(named))[:MAX_NAMED_REGIONS])
