"""Payloads of AWS IoT's lifecycle and registry events.

Field names and values follow the AWS IoT developer guide ("Lifecycle events", "Registry
events"), so that applications written against AWS read them unchanged.
"""

from __future__ import annotations

from typing import Any


def presence_payload(
    event: str,
    *,
    client_id: str,
    timestamp_ms: int,
    session_id: str,
    principal: str,
    ip: str,
    version: int,
    disconnect_reason: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "clientId": client_id,
        "timestamp": timestamp_ms,
        "eventType": event,
        "sessionIdentifier": session_id,
        "principalIdentifier": principal,
        "ipAddress": ip,
        "versionNumber": version,
    }
    if event == "disconnected":
        body["clientInitiatedDisconnect"] = disconnect_reason == "CLIENT_INITIATED_DISCONNECT"
        body["disconnectReason"] = disconnect_reason
    return body


def thing_payload(
    operation: str, thing: dict[str, Any], *, event_id: str, timestamp_ms: int, account: str
) -> dict[str, Any]:
    """``operation`` is CREATED, UPDATED or DELETED; ``thing`` is the thing as last stored."""
    return {
        "eventType": "THING_EVENT",
        "eventId": event_id,
        "timestamp": timestamp_ms,
        "operation": operation,
        "accountId": account,
        "thingId": thing.get("thingId"),
        "thingName": thing.get("thingName"),
        "versionNumber": thing.get("version"),
        "thingTypeName": thing.get("thingTypeName"),
        "attributes": thing.get("attributes", {}),
    }
