"""Device shadow documents with AWS IoT's semantics.

A shadow holds ``desired`` and ``reported`` JSON state, per-leaf ``metadata`` timestamps, a
``version`` that increases with every accepted change, and the derived ``delta`` (what is
desired but not yet reported). This module validates requests, applies them and builds the
response payloads exactly as AWS documents them; the shadow service only moves bytes.

State is derived from stamped per-leaf writes (``leaves.py``) so that copies in several regions
merge without lost updates; applied one after another the writes give AWS's merge exactly.

Choices where AWS's documentation is silent (recorded in docs/architecture.md):
- an object emptied by ``null`` deletes disappears, as a whole section set to ``null`` does;
- ``/update/delta`` is published when an update touches ``desired`` and the whole document then
  has a non-empty delta; its ``state`` is that whole delta.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from geofleet.domain import leaves
from geofleet.domain.errors import GeofleetError
from geofleet.domain.hlc import HLC
from geofleet.domain.json_types import Json
from geofleet.domain.leaves import Leaves

MAX_DOCUMENT_BYTES = 8 * 1024
MAX_DEPTH = 6
"""Levels in ``desired`` or ``reported``, counted as AWS does: every object and every array is a level."""
_MAX_DECODED_DEPTH = 32
"""Deeper text is refused before decoding: far beyond what a valid request needs (the body and
its ``state`` add two levels to a section's six), far below the decoder's recursion limit.
Shallower text is decoded so that the exact check per section can echo the clientToken."""
_TOO_DEEP = "JSON contains too many levels of nesting; maximum is 6"
MAX_CLIENT_TOKEN_BYTES = 64
MAX_STORED_LEAVES = 4096
"""Stamped entries one shadow may hold (live leaves, tombstones, shadowed writes). An 8 KB
document has at most about 1,600 leaves; the rest is room for tombstones until they are
collected. Past it a local update is refused with 413 rather than making every later update
of the shadow slower (each costs time linear in this number)."""
SECTIONS = ("desired", "reported")


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
    leaves: Leaves = field(default_factory=dict)
    """The stamped writes ``state`` and ``metadata`` are derived from (see ``leaves.py``)."""

    @property
    def exists(self) -> bool:
        return self.state is not None

    def to_json(self) -> Json:
        return {"state": self.state, "metadata": self.metadata, "version": self.version,
                "timestamp": self.timestamp, "leaves": self.leaves}

    @classmethod
    def from_json(cls, data: Json) -> Shadow:
        return cls(data.get("state"), data.get("metadata") or {}, int(data.get("version", 0)),
                   int(data.get("timestamp", 0)), data.get("leaves") or {})


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
    ops: Leaves
    """The stamped writes of this update: what replication ships to other regions."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    shadow: Shadow
    changed: bool
    """Whether the visible document changed (then ``version`` moved and events are due)."""
    documents: Json | None
    delta: Json | None


def parse_json(payload: bytes) -> tuple[Json, str | None]:
    """Decode a request body: size, UTF-8 and JSON object checks, plus the clientToken.

    Nesting is measured on the raw text before decoding, so a deep document costs a linear scan
    and is refused with AWS's message instead of reaching the recursive decoder. What is decoded
    must also be what every encoder on the way out can write back (the MQTT and HTTP answers,
    the SQLite store, the replication feed): ``NaN``, ``Infinity``, numbers that overflow to
    them and lone UTF-16 surrogates are not JSON that can be served, so they are "Invalid JSON"
    here rather than a failure later in every region."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(415, "Unsupported documented encoding; supported encoding is UTF-8") from None
    if not text.strip():
        return {}, None
    if nesting(text) > _MAX_DECODED_DEPTH:
        raise ShadowError(400, _TOO_DEEP)
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
        json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise ShadowError(400, "Invalid JSON") from None
    if not isinstance(body, dict):
        raise ShadowError(400, "Invalid JSON")
    token = body.get("clientToken")
    if token is not None and (not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES):
        raise ShadowError(400, "Invalid clientToken")
    return body, token


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def nesting(text: str) -> int:
    """The deepest nesting of objects and arrays in JSON ``text``, without decoding it (brackets
    inside strings do not count); malformed text gives some number and fails to decode later."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
        if value is not None and depth(value) > MAX_DEPTH:
            raise ShadowError(400, _TOO_DEEP, token)
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ShadowError(400, "Invalid version", token)
    return UpdateRequest(state, version, token)


def apply_update(
    current: Shadow, request: UpdateRequest, now: int, *, hlc: HLC | None = None, region: str = "",
    horizon: HLC | None = None,
) -> UpdateResult:
    """Apply an update; raises ShadowError(409) on a stale version, 413 when the result is
    too large. ``hlc`` stamps the writes (default: ``now``), always after the shadow's last.
    ``horizon``: no write older than it can still arrive, so tombstones older than it go
    (``leaves.collect``); never past this update's own stamp, which must not be refused."""
    if request.version is not None and request.version != current.version:
        raise ShadowError(409, "Version conflict", request.client_token)
    stamp = _next_stamp(current, hlc or HLC(now * 1000))
    ops = leaves.without_idle_deletes(leaves.ops_from_patch(request.state, stamp, region), current.state)
    if horizon is not None:
        ops.update(leaves.collect(current.leaves, min(horizon, stamp), region))
    merge = leaves.merge_document(current.leaves, ops)
    merged, state, metadata = merge.leaves, merge.state, merge.metadata
    if len(json.dumps(state, separators=(",", ":")).encode()) > MAX_DOCUMENT_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed", request.client_token)
    if len(merged) > MAX_STORED_LEAVES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed", request.client_token)
    updated = Shadow(state, metadata, current.version + 1, now, merged)
    accepted: Json = {
        "state": request.state,
        "metadata": {s: _stamp(p, now) for s, p in request.state.items() if p is not None},
        "version": updated.version,
        "timestamp": now,
    }
    _with_token(accepted, request.client_token)
    documents = _documents(current, updated, now, request.client_token)
    delta = delta_message(updated, request.client_token) if "desired" in request.state else None
    return UpdateResult(updated, accepted, documents, delta, ops)


def merge_remote(current: Shadow, ops: Leaves, now: int) -> MergeResult:
    """Fold writes made in another region into this region's copy. The region's own
    ``version`` moves only when the visible document changes, as AWS's would."""
    merge = leaves.merge_document(current.leaves, ops)
    if not merge.changed:
        return MergeResult(current, False, None, None)
    merged, state, metadata = merge.leaves, merge.state, merge.metadata
    if state == current.state and metadata == current.metadata:
        return MergeResult(Shadow(current.state, current.metadata, current.version, current.timestamp, merged),
                           False, None, None)
    updated = Shadow(state, metadata, current.version + 1, now, merged)
    documents = _documents(current, updated, now, None) if updated.exists else None
    return MergeResult(updated, True, documents, delta_message(updated, None) if updated.exists else None)


def _next_stamp(current: Shadow, hlc: HLC) -> HLC:
    last = leaves.latest(current.leaves)
    if last is None or hlc > last:
        return hlc
    return HLC(last.wall_ms, last.logical + 1)


def _documents(previous: Shadow, current: Shadow, now: int, client_token: str | None) -> Json:
    body: Json = {
        "previous": _snapshot(previous) if previous.exists else None,
        "current": _snapshot(current),
        "timestamp": now,
    }
    return _with_token(body, client_token)


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


def delete(
    current: Shadow, shadow_name: str, client_token: str | None, now: int, *,
    hlc: HLC | None = None, region: str = "", horizon: HLC | None = None,
) -> tuple[Shadow, Json, Leaves]:
    """Delete a shadow; its version is kept so that a re-created shadow continues from it.
    Returns the deleted shadow, the accepted payload and the stamped write to replicate (the
    root tombstone drops every older entry at once, see ``leaves.compact``)."""
    if not current.exists:
        raise ShadowError(404, f"No shadow exists with name: '{shadow_name}'", client_token)
    stamp = _next_stamp(current, hlc or HLC(now * 1000))
    ops = leaves.ops_delete(stamp, region)
    if horizon is not None:
        ops.update(leaves.collect(current.leaves, min(horizon, stamp), region))
    merged, _ = leaves.merge(current.leaves, ops)
    deleted = Shadow(None, {}, current.version, now, merged)
    return deleted, _with_token({"version": current.version, "timestamp": now}, client_token), ops


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


def _snapshot(shadow: Shadow) -> Json:
    state = shadow.state or {}
    return {"state": {s: state[s] for s in SECTIONS if s in state},
            "metadata": shadow.metadata, "version": shadow.version}


def _with_token(body: Json, client_token: str | None) -> Json:
    if client_token is not None:
        body["clientToken"] = client_token
    return body


def depth(value: Any) -> int:
    """Levels of nesting as AWS counts them: an object or an array is one level more than the
    deepest value it holds, a scalar none (so ``{"a": [1]}`` has two levels)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0
