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

The map stays bounded: a ``null`` on a key that is not there writes nothing; an entry a newer
ancestor hides is dropped at once; tombstones, and entries only a newer descendant hides, are
dropped once they are older than the *floor*, which a region raises after the retention period
and which replicates like any write (``compact``, ``collect``). A write older than the floor is
refused, so a collected tombstone never lets a late write resurrect what it deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from geofleet.domain.hlc import HLC
from geofleet.domain.json_types import Json

Entry = list[Any]
"""``[hlc, region, deleted, value]``: JSON-friendly for the store and the wire."""
Leaves = dict[str, Entry]
"""Path (a JSON list of keys) -> the last write of that path."""

EXISTS = json.dumps(["@"])
"""Written by every update, removed by a delete: whether the shadow currently exists."""
ROOT = json.dumps([])
FLOOR = json.dumps(["#floor"])
"""Not a leaf: ``[hlc, region, True, None]`` saying that entries older than ``hlc`` which no
longer show may have been collected, so that a write older than it is refused (``merge``)."""
_WALL_DIGITS = len(HLC(0).encode().partition(".")[0])


def stamp(entry: Entry) -> tuple[str, str]:
    return entry[0], entry[1]


def latest(leaves: Leaves) -> HLC | None:
    newest = max((e[0] for e in leaves.values()), default=None)  # encoded stamps sort as time does
    return None if newest is None else HLC.decode(newest)


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
    """Pointwise maximum by stamp, then ``compact``; returns the merged map and whether anything
    changed. A write older than the floor (see ``collect``) is refused: the tombstone that would
    hide it may be gone, and letting it in would resurrect a deleted leaf."""
    merged = merge_document(leaves, ops, materialized=False)
    return merged.leaves, merged.changed


@dataclass(frozen=True, slots=True)
class Merged:
    leaves: Leaves
    changed: bool
    state: Json | None
    """The document of ``leaves`` (see ``materialize``), when asked for."""
    metadata: Json


def merge_document(leaves: Leaves, ops: Leaves, *, materialized: bool = True) -> Merged:
    """``merge`` and ``materialize`` of the result with one analysis of the map: an update
    needs both, and the analysis is most of their cost. (Dropping entries never changes which
    of the others show, so the analysis before compaction serves the document after it.)"""
    floor = max(_floor(leaves), _floor(ops))
    union = dict(leaves)
    changed = False
    for path, entry in ops.items():
        if path != FLOOR and entry[0] < floor:
            continue
        current = union.get(path)
        if current is None or _tiebreak(entry) > _tiebreak(current):
            union[path] = entry
            changed = True
    if not changed and not materialized:
        return Merged(leaves, False, None, {})
    analysis = _analyse(union)
    kept = _compact(union, analysis) if changed else leaves
    state, metadata = _materialize(union, analysis) if materialized else (None, {})
    return Merged(kept, changed and kept != leaves, state, metadata)


def _tiebreak(entry: Entry) -> tuple[str, str, str]:
    # Equal stamps only arise from a replayed write; the value breaks the tie deterministically.
    return entry[0], entry[1], json.dumps(entry[3], sort_keys=True)


# -- which entries still matter ----------------------------------------------------------------
#
# An entry is *shadowed* when a newer entry sits on its root-to-leaf line. Two cases differ:
# - shadowed by a newer *ancestor* (a section or object set or deleted later, or the whole
#   shadow deleted): everything the entry could ever hide is on the ancestor's line and older
#   than it, so the ancestor hides it too; the entry can go at once, in every region alike;
# - shadowed only by a newer *descendant* (a later field turned a scalar into an object), or a
#   tombstone: it still hides older writes on other branches that may be on their way. It can
#   go once no such write can arrive any more, i.e. when it is older than the floor.
# Analysing a map costs one pass over its entries per level of their paths: linear in its size.


def _floor(leaves: Leaves) -> str:
    entry = leaves.get(FLOOR)
    return "" if entry is None else str(entry[0])


@lru_cache(maxsize=1 << 16)
def _keys(path: str) -> tuple[str, ...]:
    """A path's keys; every update of a shadow analyses all its paths, so they are parsed once."""
    return tuple(json.loads(path))


@lru_cache(maxsize=1 << 16)
def _shape(path: str) -> tuple[str, tuple[str, ...]]:
    """A path in canonical form and its proper prefixes (root first), in the same form."""
    keys = _keys(path)
    return json.dumps(list(keys)), tuple(json.dumps(list(keys[:cut])) for cut in range(len(keys)))


Rank = tuple[str, str, str]


Analysis = dict[str, tuple[bool, bool]]


def _analyse(leaves: Leaves) -> Analysis:
    """Per path (but the floor): (shadowed by an ancestor, shadowed by a descendant). Ranks
    order the entries of one line: stamp, then path (equal stamps on one line are test
    artefacts). One pass per level of the paths: linear in the number of entries."""
    shapes = {path: _shape(path) for path in leaves if path != FLOOR}
    ranks: dict[str, Rank] = {}
    for path, (canonical, _) in shapes.items():
        entry = leaves[path]
        ranks[canonical] = (entry[0], entry[1], canonical)
    below: dict[str, Rank] = {}
    for canonical, prefixes in shapes.values():
        rank = ranks[canonical]
        for prefix in prefixes:
            newest = below.get(prefix)
            if newest is None or rank > newest:
                below[prefix] = rank
    result = {}
    for path, (canonical, prefixes) in shapes.items():
        rank = ranks[canonical]
        by_ancestor = False
        for prefix in prefixes:
            above = ranks.get(prefix)
            if above is not None and above > rank:
                by_ancestor = True
                break
        newest = below.get(canonical)
        result[path] = (by_ancestor, newest is not None and newest > rank)
    return result


def compact(leaves: Leaves) -> Leaves:
    """Drop the entries that can no longer change any document: those a newer ancestor
    shadows, and below the floor the tombstones and every shadowed entry. The result is a
    function of the map alone, so regions that hold the same writes hold the same map."""
    return _compact(leaves, _analyse(leaves))


def _compact(leaves: Leaves, analysis: Analysis) -> Leaves:
    floor = _floor(leaves)
    kept: Leaves = {}
    for path, (by_ancestor, by_descendant) in analysis.items():
        entry = leaves[path]
        if by_ancestor or (entry[0] < floor and (entry[2] or by_descendant)):
            continue
        kept[path] = entry
    if floor:
        kept[FLOOR] = leaves[FLOOR]
    return kept


def collect(leaves: Leaves, horizon: HLC, region: str) -> Leaves:
    """The write that raises the floor to ``horizon`` when tombstones older than it exist
    (empty otherwise); writes shadowed by a descendant go with them. The caller vouches that no
    write older than ``horizon`` is still on its way to this region (the retention period);
    merging the write drops them here and, replicated like any write, in every other region."""
    stamp = horizon.encode()
    if stamp <= _floor(leaves):
        return {}
    if any(entry[2] and entry[0] < stamp for path, entry in leaves.items() if path != FLOOR):
        return {FLOOR: [stamp, region, True, None]}
    return {}


def without_idle_deletes(ops: Leaves, state: Json | None) -> Leaves:
    """Drop the ``null`` writes that hide nothing visible in ``state``: AWS ignores a delete of
    a key that is not there, and storing it as a tombstone would grow the shadow without bound
    (the visible document would stay empty while its stored form grew with every update)."""
    return {path: entry for path, entry in ops.items()
            if not entry[2] or path == ROOT or _hides_something(state, list(_keys(path)))}


def _hides_something(state: Json | None, path: list[str]) -> bool:
    if state is None:
        return False  # a deleted shadow shows nothing
    value: Any = state
    for key in path:
        if not isinstance(value, dict):
            return True  # a scalar on the way: the delete hides it (an ancestor turned object)
        if key not in value:
            return False
        value = value[key]
    return True


def materialize(leaves: Leaves) -> tuple[Json | None, Json]:
    """The AWS-visible ``state`` (None when the shadow does not exist) and its ``metadata``."""
    return _materialize(leaves, _analyse(leaves))


def _materialize(leaves: Leaves, analysis: Analysis) -> tuple[Json | None, Json]:
    state: Json = {}
    metadata: Json = {}
    exists = False
    for path, (by_ancestor, by_descendant) in analysis.items():
        entry = leaves[path]
        if entry[2] or by_ancestor or by_descendant:
            continue
        if path == EXISTS:
            exists = True
            continue
        keys = list(_keys(path))
        if not keys:
            continue  # only a peer's malformed write could put a value at the root
        seconds = int(entry[0][:_WALL_DIGITS]) // 1000  # the stamp's wall-clock milliseconds
        _place(state, keys, entry[3])
        _place(metadata, keys, _timestamps(entry[3], seconds))
    return (state if exists else None), (metadata if exists else {})


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
