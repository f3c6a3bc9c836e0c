"""Order-independent digests of a region's state, kept up to date write by write.

State is split into 256 buckets by a hash of each object's identity. A bucket's digest is the
XOR of the hashes of its items (a live record's identity and version; a shadow's stamped
leaves), so adding or removing one item updates it in O(1) and two regions holding the same
items hold the same digest, whatever order they wrote them in. Tombstones are not items: a
region holding a record alive differs from one that holds its tombstone, and the repair pulls
the tombstone, while regions that collected a tombstone at different moments do not differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

BUCKETS = 256


def bucket_of(kind: str, key: str) -> int:
    return hashlib.sha256(f"{kind}|{key}".encode()).digest()[0]


def record_item(kind: str, key: str, hlc: str, origin: str) -> int:
    return _hash(f"r|{kind}|{key}|{hlc}|{origin}")


def shadow_item(key: str, leaves: dict[str, Any]) -> int:
    return _hash(f"s|{key}|{json.dumps(leaves, sort_keys=True, separators=(',', ':'))}")


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")


class BucketDigests:
    def __init__(self) -> None:
        self._buckets = [0] * BUCKETS

    def toggle(self, bucket: int, item: int) -> None:
        """Add an item, or remove it if present (XOR is its own inverse)."""
        self._buckets[bucket] ^= item

    def as_dict(self) -> dict[int, str]:
        return {b: f"{v:032x}" for b, v in enumerate(self._buckets) if v}
