"""Digests of a region's whole state, to find and repair what change-log shipping missed.

State is split into 256 buckets by a hash of each object's identity; a bucket's digest covers
the version (HLC, origin, deleted) of every record in it and every shadow's stamped leaves. Two
regions compare digests and exchange only the buckets that differ; applying them goes through
the ordinary merge, so a repair can never undo a newer write.

Tombstones: a round in which every peer's digest equals ours (and no log is behind) proves that
every region holds every tombstone younger than the grace period; those are marked, and
collected once they are older than the grace period. Older tombstones never take part in
digests, so regions that collect at different moments do not disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from geofleet.domain.hlc import HLC
from geofleet.domain.leaves import Leaves
from geofleet.domain.records import Record
from geofleet.replication.wire import record_to_json
from geofleet.store.base import SHADOW_KIND, Store

BUCKETS = 256


def bucket_of(kind: str, key: str) -> int:
    return hashlib.sha256(f"{kind}|{key}".encode()).digest()[0]


def digests(store: Store, horizon: HLC) -> dict[int, str]:
    """Tombstones older than ``horizon`` are left out: regions collect them at different
    moments, and a collected tombstone must not look like a difference to repair."""
    parts: dict[int, list[str]] = defaultdict(list)
    for record in _current(store, horizon):
        parts[bucket_of(record.kind.value, record.key)].append(
            f"{record.kind.value}|{record.key}|{record.hlc.encode()}|{record.origin}|{record.deleted}")
    for key, leaves in store.all_shadow_leaves():
        parts[bucket_of(SHADOW_KIND, key)].append(f"{SHADOW_KIND}|{key}|{_canonical(leaves)}")
    return {bucket: hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()
            for bucket, items in parts.items()}


def bucket_contents(store: Store, bucket: int, horizon: HLC) -> dict[str, Any]:
    records: list[Record] = [r for r in _current(store, horizon) if bucket_of(r.kind.value, r.key) == bucket]
    shadows = [{"key": key, "leaves": leaves} for key, leaves in store.all_shadow_leaves()
               if bucket_of(SHADOW_KIND, key) == bucket]
    return {"records": [record_to_json(r) for r in records], "shadows": shadows}


def differing(mine: dict[int, str], theirs: dict[int, str]) -> list[int]:
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def _current(store: Store, horizon: HLC) -> Iterator[Record]:
    return (r for r in store.all_records() if not (r.deleted and r.hlc < horizon))


def _canonical(leaves: Leaves) -> str:
    return json.dumps(leaves, sort_keys=True, separators=(",", ":"))
