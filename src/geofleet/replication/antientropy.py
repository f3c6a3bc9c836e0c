"""Comparing digests with a peer and serving digest buckets (see ``domain/digest.py``).

Two regions compare their 256 bucket digests and exchange only the buckets that differ;
applying them goes through the ordinary merge, so a repair can never undo a newer write. The
store keeps the digests current write by write, so answering a peer costs O(buckets), not a
scan of the whole state on the event loop.
"""

from __future__ import annotations

from typing import Any

from geofleet.domain.residency import Scope
from geofleet.replication.scoping import PeerView
from geofleet.replication.wire import record_to_json
from geofleet.store.base import Store


def bucket_contents(store: Store, view: PeerView, peer: str, bucket: int, scope: str) -> dict[str, Any]:
    """One scope's items in one bucket, as ``peer`` may see them (the caller checked the scope)."""
    records, shadows = store.bucket_items(bucket, scope)
    return {"records": [record_to_json(seen) for r in records if (seen := view.record(r, peer)) is not None],
            "shadows": [{"key": key, "leaves": leaves} for key, leaves in shadows]}


def differing(mine: dict[int, str], theirs: dict[int, str]) -> list[int]:
    return sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def differing_scoped(mine: dict[str, dict[int, str]], theirs: dict[str, dict[int, str]], me: str, peer: str
                     ) -> list[tuple[str, int]]:
    """(scope, bucket) pairs that differ, among the scopes both regions are in (the peer sends
    only those it shares with us; ours are filtered the same way)."""
    shared = {s for s in set(mine) | set(theirs) if Scope.decode(s).includes(me) and Scope.decode(s).includes(peer)}
    return [(scope, bucket) for scope in sorted(shared)
            for bucket in differing(mine.get(scope, {}), theirs.get(scope, {}))]
