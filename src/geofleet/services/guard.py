"""The provision-once guard's three actions on the store of the region that owns a device id,
shared by a local call and by the peer API that other regions use.

The claim rule is ``domain.guard.claim``; this module reads the entry and persists the outcome
in one transaction, so two claims of one id serialize in the owner region.
"""

from __future__ import annotations

import time
from typing import Any

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.guard import DEFAULT_STALE_MS, claim
from geofleet.store.base import Store


def guard_action(store: Store, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """``claim``, ``complete`` or ``release`` the guard of ``body["deviceId"]`` for a CSR fingerprint."""
    device_id, fingerprint = str(body.get("deviceId", "")), str(body.get("fingerprint", ""))
    if action == "claim":
        now_ms = int(time.time() * 1000)
        with store.atomic():
            outcome = claim(store.guard_get(device_id), fingerprint, now_ms,
                            int(body.get("staleMs", DEFAULT_STALE_MS)))
            if outcome.claimed:
                store.guard_put(device_id, fingerprint, now_ms)
        return {"state": outcome.state, "detail": outcome.detail}
    if action == "complete":
        store.guard_complete(device_id, fingerprint, dict(body.get("answer") or {}))
    elif action == "release":
        store.guard_release(device_id, fingerprint)
    else:
        raise InvalidRequest(f"unknown guard action {action!r}: use claim, complete or release")
    return {"state": action}
