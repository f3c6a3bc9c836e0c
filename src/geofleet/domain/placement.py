"""Which region owns a piece of global state, by rendezvous (highest-random-weight) hashing.

Every region computes the same owner from the same list of region names, with no
coordination, and adding or removing a region moves only the keys that region wins or held.
The once-only provisioning guard of a device id lives in its owner region.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def owner(key: str, regions: Iterable[str]) -> str:
    names = list(regions)
    if not names:
        raise ValueError("no regions to choose an owner from")
    return max(names, key=lambda region: (_score(key, region), region))


def _score(key: str, region: str) -> bytes:
    return hashlib.sha256(f"{region}\x00{key}".encode()).digest()
