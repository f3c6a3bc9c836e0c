"""The store port: registry records, shadows and the region's change log.

Every write goes to its table *and* to the change log in one transaction, so the log never
misses a change that was acknowledged and never holds one that was not. The replication issue
ships this log to other regions.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from geofleet.domain.hlc import HLC
from geofleet.domain.leaves import Leaves
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
    ref: str
    body: dict[str, Any] | None


class Store(Protocol):
    """What the region needs from persistence; ``SqliteStore`` documents each method."""

    on_change: Callable[[], None] | None

    def atomic(self) -> AbstractContextManager[None]: ...

    def get(self, kind: Kind, key: str) -> Record | None: ...

    def records(self, kind: Kind, *, prefix: str | None = None, ref: str | None = None) -> list[Record]: ...

    def put(self, record: Record, *, log: bool = True) -> None: ...

    def get_shadow(self, thing: str, name: str) -> Shadow | None: ...

    def put_shadow(self, thing: str, name: str, shadow: Shadow, hlc: HLC, origin: str,
                   ops: Leaves | None = None) -> None: ...

    def shadow_names(self, thing: str) -> list[str]: ...

    def bucket_digests(self) -> dict[int, str]: ...

    def bucket_items(self, bucket: int) -> tuple[list[Record], list[tuple[str, Leaves]]]: ...

    def changes(self, after: int, limit: int = 1000, kinds: tuple[str, ...] | None = None) -> list[Change]: ...

    def head(self) -> int: ...

    def log_start(self) -> int: ...

    def log_expired_through(self, before: HLC, scan: int = 5000) -> int: ...

    def truncate_log(self, through: int) -> int: ...

    def last_hlc(self) -> HLC: ...

    def cursor(self, peer: str, stream: str) -> int: ...

    def set_cursor(self, peer: str, stream: str, seq: int) -> None: ...

    def park(self, record: Record, needs: list[tuple[Kind, str]]) -> None: ...

    def unpark(self, kind: Kind, key: str) -> list[Record]: ...

    def parked(self) -> int: ...

    def probe(self, now_ms: int) -> None:
        """A small durable write, for the deep health check."""
        ...

    def mark_tombstones_seen(self, since: HLC, until: HLC) -> None: ...

    def guard_claim(self, device_id: str, fingerprint: str, now_ms: int, stale_ms: int) -> tuple[str, Any]: ...

    def guard_complete(self, device_id: str, fingerprint: str, answer: dict[str, Any]) -> None: ...

    def guard_release(self, device_id: str, fingerprint: str) -> None: ...

    def collect_tombstones(self, before: HLC) -> int: ...

    def close(self) -> None: ...
