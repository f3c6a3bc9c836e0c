"""The store port: registry records, shadows and the region's change log.

Every write goes to its table *and* to the change log in one transaction, so the log never
misses a change that was acknowledged and never holds one that was not. The replication issue
ships this log to other regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from geofleet.domain.hlc import HLC
from geofleet.domain.records import Kind, Record
from geofleet.domain.shadow import Shadow

SHADOW_KIND = "shadow"


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a region's change log."""

    seq: int
    hlc: HLC
    origin: str
    kind: str
    key: str
    body: dict[str, Any] | None


class Store(Protocol):
    def get(self, kind: Kind, key: str) -> Record | None: ...

    def records(self, kind: Kind, *, prefix: str | None = None, ref: str | None = None) -> list[Record]:
        """Live (not deleted) records of a kind, optionally by key prefix or by ref."""
        ...

    def put(self, record: Record) -> int:
        """Write a record (a tombstone when ``body`` is None) and log it; returns the log seq."""
        ...

    def get_shadow(self, thing: str, name: str) -> Shadow | None: ...

    def put_shadow(self, thing: str, name: str, shadow: Shadow, hlc: HLC, origin: str) -> int: ...

    def shadow_names(self, thing: str) -> list[str]:
        """Names of the thing's existing (not deleted) shadows; "" is the classic shadow."""
        ...

    def changes(self, after: int, limit: int = 1000) -> list[Change]: ...

    def last_hlc(self) -> HLC:
        """The highest HLC in the change log, so a restarted clock never goes backwards."""
        ...

    def close(self) -> None: ...
