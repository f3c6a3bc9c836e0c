"""Device shadow documents with AWS IoT's semantics.

A shadow holds ``desired`` and ``reported`` JSON state, per-leaf ``metadata`` timestamps, a
``version`` that increases with every accepted change, and the derived ``delta`` (what is
desired but not yet reported). This module validates requests, applies them and builds the
response payloads exactly as AWS documents them; the shadow service only moves bytes.

Choices where AWS's documentation is silent (recorded in docs/architecture.md):
- an object emptied by ``null`` deletes disappears, as a whole section set to ``null`` does;
- ``/update/delta`` is published when an update touches ``desired`` and the whole document then
  has a non-empty delta; its ``state`` is that whole delta.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from geofleet.domain.errors import GeofleetError

MAX_DOCUMENT_BYTES = 8 * 1024
MAX_DEPTH = 6
MAX_CLIENT_TOKEN_BYTES = 64
SECTIONS = ("desired", "reported")

Json = dict[str, Any]


class ShadowError(GeofleetError):
    """A rejected shadow request; ``status`` is the AWS error code (400, 404, 409, 413)."""

    def __init__(self, status: int, message: str, client_token: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.client_token = client_token

    def payload(self, timestamp: int) -> Json:
        body: Json = {"code": self.status, "message": self.message, "timestamp": timestamp}
        if self.client_token is not None:
            body["clientToken"] = self.client_token
        return body


@dataclass(slots=True)
class Shadow:
    """The stored form of one shadow. ``state is None`` means deleted (or never created):
    the version is kept so a re-created shadow continues from it, as in AWS."""

    state: Json | None = None
    metadata: Json = field(default_factory=dict)
    version: int = 0
    timestamp: int = 0

    @property
    def exists(self) -> bool:
        return self.state is not None

    def to_json(self) -> Json:
        return {"state": self.state, "metadata": self.metadata, "version": self.version,
                "timestamp": self.timestamp}

    @classmethod
    def from_json(cls, data: Json) -> Shadow:
        return cls(data.get("state"), data.get("metadata") or {}, int(data.get("version", 0)),
                   int(data.get("timestamp", 0)))


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    state: Json
    version: int | None
    client_token: str | None


@dataclass(frozen=True, slots=True)
class UpdateResult:
    shadow: Shadow
    accepted: Json
    documents: Json
    delta: Json | None


def parse_json(payload: bytes) -> tuple[Json, str | None]:
    """Decode a request body: size, UTF-8 and JSON object checks, plus the clientToken."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(415, "Unsupported documented encoding; supported encoding is UTF-8") from None
    if not text.strip():
        return {}, None
    try:
        body = json.loads(text)
    except ValueError:
        raise ShadowError(400, "Invalid JSON") from None
    if not isinstance(body, dict):
        raise ShadowError(400, "Invalid JSON")
    token = body.get("clientToken")
    if token is not None and (not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES):
        raise ShadowError(400, "Invalid clientToken")
    return body, token


def parse_update(payload: bytes) -> UpdateRequest:
    body, token = parse_json(payload)
    if "state" not in body:
        raise ShadowError(400, "Missing required node: state", token)
    state = body["state"]
    if not isinstance(state, dict):
        raise ShadowError(400, "State node must be an object", token)
    for key, value in state.items():
        if key not in SECTIONS:
            raise ShadowError(400, f"State contains an invalid node: '{key}'", token)
        if value is not None and not isinstance(value, dict):
            raise ShadowError(400, f"{key.capitalize()} node must be an object", token)
        if value is not None and _depth(value) > MAX_DEPTH:
            raise ShadowError(400, "JSON contains too many levels of nesting; maximum is 6", token)
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ShadowError(400, "Invalid version", token)
    return UpdateRequest(state, version, token)


def apply_update(current: Shadow, request: UpdateRequest, now: int) -> UpdateResult:
    """Apply an accepted-format update; raises ShadowError(409) on a stale version."""
    if request.version is not None and request.version != current.version:
        raise ShadowError(409, "Version conflict", request.client_token)
    state: Json = json.loads(json.dumps(current.state or {}))
    metadata: Json = json.loads(json.dumps(current.metadata or {}))
    for section, patch in request.state.items():
        if patch is None:
            state.pop(section, None)
            metadata.pop(section, None)
            continue
        merged_state, merged_meta = _merge(state.get(section, {}), metadata.get(section, {}), patch, now)
        _set_or_drop(state, section, merged_state)
        _set_or_drop(metadata, section, merged_meta)
    if len(json.dumps(state, separators=(",", ":")).encode()) > MAX_DOCUMENT_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed", request.client_token)
    updated = Shadow(state, metadata, current.version + 1, now)
    accepted: Json = {
        "state": request.state,
        "metadata": {s: _stamp(p, now) for s, p in request.state.items() if p is not None},
        "version": updated.version,
        "timestamp": now,
    }
    _with_token(accepted, request.client_token)
    documents: Json = {
        "previous": _snapshot(current) if current.exists else None,
        "current": _snapshot(updated),
        "timestamp": now,
    }
    _with_token(documents, request.client_token)
    delta = None
    if "desired" in request.state:
        delta = delta_message(updated, request.client_token)
    return UpdateResult(updated, accepted, documents, delta)


def get_response(current: Shadow, shadow_name: str, client_token: str | None, now: int) -> Json:
    if not current.exists:
        raise ShadowError(404, f"No shadow exists with name: '{shadow_name}'", client_token)
    state: Json = dict(current.state or {})
    delta, _ = compute_delta(current)
    if delta:
        state["delta"] = delta
    body: Json = {"state": state, "metadata": current.metadata, "version": current.version,
                  "timestamp": now}
    return _with_token(body, client_token)


def delete(current: Shadow, shadow_name: str, client_token: str | None, now: int) -> tuple[Shadow, Json]:
    """Delete a shadow; its version is kept so that a re-created shadow continues from it."""
    if not current.exists:
        raise ShadowError(404, f"No shadow exists with name: '{shadow_name}'", client_token)
    deleted = Shadow(None, {}, current.version, now)
    return deleted, _with_token({"version": current.version, "timestamp": now}, client_token)


def delta_message(shadow: Shadow, client_token: str | None) -> Json | None:
    delta, meta = compute_delta(shadow)
    if not delta:
        return None
    body: Json = {"version": shadow.version, "timestamp": shadow.timestamp, "state": delta,
                  "metadata": meta}
    return _with_token(body, client_token)


def compute_delta(shadow: Shadow) -> tuple[Json, Json]:
    """What ``desired`` asks for that ``reported`` does not show, with desired's metadata."""
    state = shadow.state or {}
    desired = state.get("desired") or {}
    reported = state.get("reported") or {}
    return _diff(desired, reported, (shadow.metadata or {}).get("desired") or {})


def _diff(desired: Json, reported: Json, meta: Json) -> tuple[Json, Json]:
    delta: Json = {}
    delta_meta: Json = {}
    for key, want in desired.items():
        have = reported.get(key) if isinstance(reported, dict) else None
        if isinstance(want, dict) and isinstance(have, dict):
            sub, sub_meta = _diff(want, have, meta.get(key) or {})
            if sub:
                delta[key], delta_meta[key] = sub, sub_meta
        elif not _same(want, have):
            delta[key] = want
            delta_meta[key] = meta.get(key, {})
    return delta, delta_meta


def _merge(state: Any, meta: Any, patch: Json, now: int) -> tuple[Json, Json]:
    merged: Json = dict(state) if isinstance(state, dict) else {}
    # A leaf replaced by an object starts with fresh metadata, not the leaf's timestamp.
    merged_meta: Json = dict(meta) if isinstance(state, dict) and isinstance(meta, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
            merged_meta.pop(key, None)
        elif isinstance(value, dict):
            sub, sub_meta = _merge(merged.get(key), merged_meta.get(key), value, now)
            _set_or_drop(merged, key, sub)
            _set_or_drop(merged_meta, key, sub_meta)
        else:
            merged[key] = value
            merged_meta[key] = _stamp(value, now)
    return merged, merged_meta


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ``==``, ``true`` is not ``1`` and ``false`` is not ``0``."""
    return a == b and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _stamp(value: Any, now: int) -> Any:
    """Metadata mirroring ``value``: a timestamp per leaf, per element of arrays."""
    if isinstance(value, dict):
        return {k: _stamp(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [_stamp(v, now) for v in value]
    return {"timestamp": now}


def _set_or_drop(target: Json, key: str, value: Json) -> None:
    if value:
        target[key] = value
    else:
        target.pop(key, None)


def _snapshot(shadow: Shadow) -> Json:
    state = shadow.state or {}
    return {"state": {s: state[s] for s in SECTIONS if s in state},
            "metadata": shadow.metadata, "version": shadow.version}


def _with_token(body: Json, client_token: str | None) -> Json:
    if client_token is not None:
        body["clientToken"] = client_token
    return body


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_depth(v) for v in value), default=0)
    return 0
