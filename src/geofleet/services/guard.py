"""The provision-once guard's three actions on the store of the region that owns a device id,
shared by a local call and by the peer API that other regions use."""

from __future__ import annotations

import time
from typing import Any

from geofleet.domain.errors import InvalidRequest
from geofleet.store.base import Store

DEFAULT_STALE_MS = 30_000


def guard_action(store: Store, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """``claim``, ``complete`` or ``release`` the guard of ``body["deviceId"]`` for a CSR fingerprint."""
    device_id, fingerprint = str(body.get("deviceId", "")), str(body.get("fingerprint", ""))
    if action == "claim":
        state, detail = store.guard_claim(device_id, fingerprint, int(time.time() * 1000),
                                          int(body.get("staleMs", DEFAULT_STALE_MS)))
        return {"state": state, "detail": detail}
    if action == "complete":
        store.guard_complete(device_id, fingerprint, dict(body.get("answer") or {}))
    elif action == "release":
        store.guard_release(device_id, fingerprint)
    else:
        raise InvalidRequest(f"unknown guard action {action!r}: use claim, complete or release")
    return {"state": action}
