"""How far back a write can still arrive from another region: the point behind which tombstones
(registry records' and shadow leaves') may be collected.

A tombstone must outlive every write it hides that is still on its way; collect it earlier and
the late write resurrects what was deleted. Two conditions together make "no longer on its way"
safe: the write is older than the start of the last anti-entropy round in which every peer
agreed with this region (everything written before it had reached every region), *and* older
than a grace period (clock skew between regions, a round that raced a write). Before the first
such round, nothing is collected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from geofleet.domain.hlc import HLC

DEFAULT_GRACE_S = 24 * 3600.0


class TombstoneHorizon:
    """One region's horizon, shared by its replication (which reports agreement) and its
    registry and shadow stores (which collect behind it)."""

    def __init__(self, grace_s: float, wall_s: Callable[[], float] = time.time) -> None:
        self.grace_s = grace_s
        self._wall_s = wall_s
        self._agreed: HLC | None = None

    def agreed(self, started: HLC) -> None:
        """Every peer agreed with this region in a round that started at ``started``."""
        if self._agreed is None or started > self._agreed:
            self._agreed = started

    def by_age(self) -> HLC:
        """Older than the grace period (the age condition alone)."""
        return HLC(max(0, int((self._wall_s() - self.grace_s) * 1000)))

    def current(self) -> HLC:
        """Writes older than this can no longer arrive: both conditions."""
        return HLC(0) if self._agreed is None else min(self.by_age(), self._agreed)
