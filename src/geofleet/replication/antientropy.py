"""Digests of a region's whole state, to find and repair what change-log shipping missed.

State is split into 256 buckets by a hash of each object's identity; a bucket's digest covers
the version (HLC, origin, deleted) of every record in it and every shadow's stamped leaves. Two
regions compare digests and exchange only the buckets that differ; applying them goes through
the ordinary merge, so a repair can never undo a newer write.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

from geofleet.domain.leaves import Leaves
from geofleet.domain.records import Record
from geofleet.replication.wire import record_to_json
from geofleet.store.base import SHADOW_KIND, Store

BUCKETS = 256


def bucket_of(kind: str, key: str) -> int:
    return hashlib.sha256(f"{kind}|{key}".encode()).digest()[0]


def digests(store: Store) -> dict[int, str]:
    parts: dict[int, list[str]] = defaultdict(list)
    for record in store.all_records():
        parts[bucket_of(record.kind.value, record.key)].append(
            f"{record.kind.value}|{record.key}|{record.hlc.encode()}|{record.origin}|{record.deleted}")
    for key, leaves in store.all_shadow_leaves():
        parts[bucket_of(SHADOW_KIND, key)].append(f"{SHADOW_KIND}|{key}|{_canonical(leaves)}")
    return {bucket: hashlib.sha256("\n".join(sorted(items)).encode()).hexdigest()
            for bucket, items in parts.items()}


def bucket_contents(store: Store, bucket: int) -> dict[str, Any]:
    records: list[Record] = [r for r in store.all_records() if bucket_of(r.kind.value, r.key) == bucket]
    shadows = [{"key": key, "leaves": leaves} for key, leaves in store.all_shadow_leaves()
               if bucket_of(SHADOW_KIND, key) == bucket]
    return {"records": [record_to_json(r) for r in records], "shadows": shadows}


def differing(mine: dict[int, str], theirs: dict[int, str]) -> list[int]:
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def _canonical(leaves: Leaves) -> str:
    return json.dumps(leaves, sort_keys=True, separators=(",", ":"))
