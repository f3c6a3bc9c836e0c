"""The one name for a JSON object as geofleet handles it (request and response bodies, shadow
documents, registry records): a ``str``-keyed dict whose values are checked where they are
read, not by the type. One alias so every module means the same thing by it."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]
"""A decoded JSON object, e.g. ``{"thingName": "sensor-1", "attributes": {}}``."""
