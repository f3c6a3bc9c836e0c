"""Applying what another region wrote: the same path for log shipping and anti-entropy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from geofleet.domain.hlc import HLC
from geofleet.domain.leaves import Leaves
from geofleet.domain.records import Kind, Record
from geofleet.services.ledger import RecordMerger
from geofleet.services.shadows import ShadowService
from geofleet.store.base import SHADOW_KIND, Change

Publish = Callable[[], Awaitable[None]]


class Applier:
    def __init__(self, records: RecordMerger, shadows: ShadowService) -> None:
        self._records = records
        self._shadows = shadows

    def change(self, change: Change) -> Publish | None:
        """Apply one change (inside the caller's transaction); returns MQTT messages to publish
        after commit, if any."""
        if change.kind == SHADOW_KIND:
            return self.shadow(change.key, (change.body or {}).get("ops") or {}, change.hlc, change.origin)
        self.record(Record(Kind(change.kind), change.key, change.body, change.hlc, change.origin, change.ref))
        return None

    def record(self, record: Record) -> None:
        self._records.merge(record)

    def shadow(self, key: str, ops: Leaves, hlc: HLC, origin: str) -> Publish:
        return self._shadows.merge_remote(key, ops, hlc, origin)
