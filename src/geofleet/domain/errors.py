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
    error = _BY_STATUS.get(response.status_code, GeofleetError)(str(message))
    error.status = response.status_code
    raise error
