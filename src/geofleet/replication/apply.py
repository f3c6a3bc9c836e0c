"""Applying what another region wrote: the same path for log shipping and anti-entropy.

Nothing of a device whose residency scope leaves this region out is applied here, whatever the
sender believed (a peer that has not yet heard of a ``device move`` may still send it): its
thing arrives as the stub (``Ledger.kept``), its shadow writes and presence entries are dropped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from geofleet.domain.hlc import HLC
from geofleet.domain.leaves import Leaves
from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import SHADOW_KIND, subject
from geofleet.services.ledger import RecordMerger
from geofleet.services.shadows import ShadowService
from geofleet.store.base import Change

Publish = Callable[[], Awaitable[None]]


class ScopeCheck(Protocol):
    """Whether this region may hold a device's data (``services.residency.Residency``)."""

    def here(self, device: str) -> bool: ...


class Applier:
    def __init__(self, records: RecordMerger, shadows: ShadowService, residency: ScopeCheck) -> None:
        self._records = records
        self._shadows = shadows
        self._residency = residency
        self.dropped = 0
        """Changes not applied because this region is outside their device's scope."""

    def change(self, change: Change) -> Publish | None:
        """Apply one change (inside the caller's transaction); returns MQTT messages to publish
        after commit, if any."""
        if change.kind == SHADOW_KIND:
            return self.shadow(change.key, (change.body or {}).get("ops") or {}, change.hlc, change.origin)
        self.record(Record(Kind(change.kind), change.key, change.body, change.hlc, change.origin, change.ref))
        return None

    def record(self, record: Record) -> None:
        if self._allowed(record.kind.value, record.key, record.ref):
            self._records.merge(record)

    def shadow(self, key: str, ops: Leaves, hlc: HLC, origin: str) -> Publish | None:
        if not self._allowed(SHADOW_KIND, key, ""):
            return None
        return self._shadows.merge_remote(key, ops, hlc, origin)

    def _allowed(self, kind: str, key: str, ref: str) -> bool:
        device = subject(kind, key, ref)
        if device is None or self._residency.here(device):
            return True
        self.dropped += 1
        return False
