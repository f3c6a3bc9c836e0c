"""Comparing digests with a peer and serving digest buckets (see ``domain/digest.py``).

Two regions compare their 256 bucket digests and exchange only the buckets that differ;
applying them goes through the ordinary merge, so a repair can never undo a newer write. The
store keeps the digests current write by write, so answering a peer costs O(buckets), not a
scan of the whole state on the event loop.
"""

from __future__ import annotations

from typing import Any

from geofleet.replication.wire import record_to_json
from geofleet.store.base import Store


def bucket_contents(store: Store, bucket: int) -> dict[str, Any]:
    records, shadows = store.bucket_items(bucket)
    return {"records": [record_to_json(r) for r in records],
            "shadows": [{"key": key, "leaves": leaves} for key, leaves in shadows]}


def differing(mine: dict[int, str], theirs: dict[int, str]) -> list[int]:
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))
