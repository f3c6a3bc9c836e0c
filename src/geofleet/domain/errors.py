"""Errors a user can act on.

Each error carries an HTTP-style ``status`` and a message that says what was wrong and, where it
helps, what to do. The HTTP API turns them into responses, the MQTT shadow service into
``/rejected`` messages, and the CLI into a message and an exit code.
"""

from __future__ import annotations


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
