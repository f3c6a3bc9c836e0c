"""Shadow state as stamped leaves, so that regions can merge shadows without losing updates.

A shadow's ``desired`` and ``reported`` state is kept as a map from leaf path to the last write
of that path: the value (or a deletion) and its stamp, (HLC, region). An update turns into one
entry per leaf it writes; ``null`` and whole-section or whole-shadow deletes are entries too.

Merging two maps keeps, per path, the entry with the higher stamp: commutative, associative and
idempotent, so every region that has seen the same writes holds the same map, whatever the
order. The document is a pure function of the map: a live entry is visible unless an entry on
the same root-to-leaf line (an ancestor or a descendant) has a higher stamp. Written one after
another, entries reproduce AWS's merge exactly (a later scalar replaces an object, a later
field turns a scalar into an object, ``null`` deletes); written concurrently in two regions,
different leaves both survive and the same leaf resolves the same way everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from geofleet.domain.hlc import HLC

Json = dict[str, Any]
Entry = list[Any]
"""``[hlc, region, deleted, value]``: JSON-friendly for the store and the wire."""
Leaves = dict[str, Entry]
"""Path (a JSON list of keys) -> the last write of that path."""

EXISTS = json.dumps(["@"])
"""Written by every update, removed by a delete: whether the shadow currently exists."""
ROOT = json.dumps([])


def stamp(entry: Entry) -> tuple[str, str]:
    return entry[0], entry[1]


def latest(leaves: Leaves) -> HLC | None:
    return max((HLC.decode(e[0]) for e in leaves.values()), default=None)


def ops_from_patch(patch: Json, hlc: HLC, region: str) -> Leaves:
    """The entries an AWS ``state`` patch writes (sections, nested objects, nulls)."""
    ops: Leaves = {EXISTS: [hlc.encode(), region, False, True]}
    _collect(patch, [], hlc.encode(), region, ops)
    return ops


def _collect(value: Any, path: list[str], hlc: str, region: str, ops: Leaves) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _collect(child, [*path, key], hlc, region, ops)
    elif isinstance(value, dict):
        return  # an empty object writes nothing, as in AWS
    elif value is None:
        ops[json.dumps(path)] = [hlc, region, True, None]
    else:
        ops[json.dumps(path)] = [hlc, region, False, value]


def ops_delete(hlc: HLC, region: str) -> Leaves:
    """Delete the whole shadow: one entry at the root dominates every older write."""
    return {ROOT: [hlc.encode(), region, True, None]}


def merge(leaves: Leaves, ops: Leaves) -> tuple[Leaves, bool]:
    """Pointwise maximum by stamp; returns the merged map and whether anything changed."""
    merged = dict(leaves)
    changed = False
    for path, entry in ops.items():
        current = merged.get(path)
        if current is None or _order(entry) > _order(current):
            merged[path] = entry
            changed = True
    return merged, changed


def _order(entry: Entry) -> tuple[str, str, str]:
    # Equal stamps only arise from a replayed write; the value breaks the tie deterministically.
    return entry[0], entry[1], json.dumps(entry[3], sort_keys=True)


def materialize(leaves: Leaves) -> tuple[Json | None, Json]:
    """The AWS-visible ``state`` (None when the shadow does not exist) and its ``metadata``."""
    parsed = [(json.loads(path), entry) for path, entry in leaves.items()]
    state: Json = {}
    metadata: Json = {}
    exists = False
    for path, entry in parsed:
        if entry[2] or _dominated(path, _order(entry), parsed):
            continue
        if path == ["@"]:
            exists = True
            continue
        seconds = HLC.decode(entry[0]).wall_ms // 1000
        _place(state, path, entry[3])
        _place(metadata, path, _timestamps(entry[3], seconds))
    return (state if exists else None), (metadata if exists else {})


def _dominated(path: list[str], order: tuple[str, str, str], parsed: list[tuple[list[str], Entry]]) -> bool:
    return any(other != path and _on_one_line(path, other) and _order(entry) > order for other, entry in parsed)


def _on_one_line(a: list[str], b: list[str]) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _place(target: Json, path: list[str], value: Any) -> None:
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _timestamps(value: Any, seconds: int) -> Any:
    if isinstance(value, list):
        return [_timestamps(v, seconds) for v in value]
    if isinstance(value, dict):
        return {k: _timestamps(v, seconds) for k, v in value.items()}
    return {"timestamp": seconds}
