"""The one write path of registry records: every record a region writes or merges goes
through here, so that the store logs it for replication and every observer (events, the
gate's policy cache, presence) hears about it exactly once.

Replication sees only the ``RecordMerger`` port: it applies what other regions wrote and
needs nothing else of the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from geofleet.domain.errors import NotFound
from geofleet.domain.hlc import Clock
from geofleet.domain.records import Kind, Record, dependencies, supersedes
from geofleet.domain.residency import Scope, stub
from geofleet.store.base import Store

Observer = Callable[[Record | None, Record], None]
"""Called with (previous, new) after every write."""


class RecordMerger(Protocol):
    """What replication needs of a region's records: apply one written elsewhere."""

    def merge(self, record: Record) -> bool: ...


class Ledger:
    def __init__(self, store: Store, clock: Clock, region: str, global_attributes: tuple[str, ...] = ()) -> None:
        """``global_attributes``: thing attributes a region outside a device's residency scope
        keeps besides ``domain.residency.GLOBAL_ATTRIBUTES`` (fleet.json)."""
        self._store = store
        self._clock = clock
        self.region = region
        self.global_attributes = global_attributes
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    # -- reads -----------------------------------------------------------------------------

    def live(self, kind: Kind, key: str) -> Record | None:
        record = self._store.get(kind, key)
        return None if record is None or record.deleted else record

    def require(self, kind: Kind, key: str, what: str) -> Record:
        record = self.live(kind, key)
        if record is None:
            raise NotFound(f"{what} {key!r} does not exist")
        return record

    def records(self, kind: Kind, *, prefix: str | None = None, ref: str | None = None) -> list[Record]:
        return self._store.records(kind, prefix=prefix, ref=ref)

    def listed(self, kind: Kind, after: str | None, limit: int | None) -> list[Record]:
        """Every record of ``kind``; with ``limit``, a keyset page of at most ``limit`` after ``after``."""
        if limit is None:
            return self._store.records(kind)
        return self._store.records_after(kind, after or "", limit)

    # -- writes ----------------------------------------------------------------------------

    def atomic(self) -> AbstractContextManager[None]:
        """One transaction around several writes (see ``Store.atomic``)."""
        return self._store.atomic()

    def put(self, kind: Kind, key: str, body: dict[str, Any], ref: str = "") -> Record:
        """Write a record of this region, stamped now."""
        record = Record(kind, key, body, self._clock.now(), self.region, ref)
        self._commit(record)
        return record

    def delete(self, record: Record) -> None:
        self._commit(Record(record.kind, record.key, None, self._clock.now(), self.region, record.ref))

    def tombstone(self, kind: Kind, key: str, ref: str) -> None:
        """A tombstone for a record that is not here (yet): an older write still on its way from
        another region cannot resurrect it when it arrives."""
        self.delete(Record(kind, key, None, self._clock.now(), self.region, ref))

    def _commit(self, record: Record, *, log: bool = True) -> None:
        previous = self._store.get(record.kind, record.key)
        kept = self.kept(record)
        self._store.put(kept, log=log, logged=record)
        record = kept
        for observer in self._observers:
            observer(previous, record)

    def kept(self, record: Record) -> Record:
        """What this region stores of a record: a thing of a device whose residency scope leaves
        this region out is kept as its stub (``domain.residency``); anything else as it is."""
        if record.kind is Kind.THING and not Scope.of_thing(record.body).includes(self.region):
            return replace(record, body=stub(record.body, self.global_attributes))
        return record

    # -- replication -----------------------------------------------------------------------

    def merge(self, record: Record) -> bool:
        """Apply a record written in another region, if it wins over what is here (see
        ``records.supersedes``). A record whose dependencies have not arrived yet (an attachment
        before its certificate) is parked and applied when they arrive. Returns whether it was
        applied now."""
        self._clock.observe(record.hlc)
        if not supersedes(record, self._store.get(record.kind, record.key)):
            return False
        missing = [(kind, key) for kind, key in dependencies(record) if self._store.get(kind, key) is None]
        if missing:
            self._store.park(record, missing)
            return False
        self._commit(record, log=False)
        for waiting in self._store.unpark(record.kind, record.key):
            self.merge(waiting)
        return True
