"""A region's side of data residency (the rules are in ``domain.residency``).

- ``Residency.check_here`` is what the admin and application routes ask before they read or
  write a device's scoped data here: outside its scope they answer ``WrongRegion`` (421) with the
  regions to ask, never a stale or partial copy.
- When a thing record moves this region out of its device's scope (a replicated ``device move``,
  or a changed ``geofleet:regions``), ``Residency`` deletes the device's data here at once, in
  the transaction that applied the thing: shadows and presence entries in the store, and, through
  ``Purger`` ports, what the journal and the rules keep about it; its live session here is closed.
- When a thing record moves this region *into* a scope, the region's data arrives by anti-entropy
  (per-scope digests): ``on_enter`` asks replication for a round soon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import Scope
from geofleet.services.ledger import Ledger
from geofleet.store.base import Store

log = logging.getLogger(__name__)


class Purger(Protocol):
    """Something outside the store that keeps data about devices (the journal, the rules'
    outbox and dead letters): it forgets one device's."""

    def purge_device(self, device: str) -> int: ...


class Residency:
    def __init__(self, store: Store, ledger: Ledger, region: str, purgers: Sequence[Purger] = (),
                 disconnect: Callable[[str], None] = lambda _device: None) -> None:
        """``disconnect`` closes a device's live session in this region (the broker's)."""
        self._store = store
        self._ledger = ledger
        self._region = region
        self._purgers = list(purgers)
        self._disconnect = disconnect
        self.on_enter: Callable[[str], None] = lambda _device: None
        """Called when this region enters a device's scope (replication sets it: a sync soon)."""
        ledger.observe(self._changed)

    def scope(self, device: str) -> Scope:
        return Scope.decode(self._store.scope_of(device))

    def here(self, device: str) -> bool:
        """Whether this region may hold the device's data."""
        return self.scope(device).includes(self._region)

    def check_here(self, device: str) -> None:
        """WrongRegion (421, with where to ask) unless this region may hold the device's data."""
        self.scope(device).require(device, self._region)

    def _changed(self, previous: Record | None, record: Record) -> None:
        if record.kind is not Kind.THING or record.body is None:
            return
        now = Scope.of_thing(record.body)
        before = Scope.of_thing(previous.body) if previous is not None and previous.body is not None else None
        if not now.includes(self._region):
            if before is None:  # first seen here: only a stray replicated item can be here, in the store
                self._store.purge_device(record.key)
            elif before.includes(self._region):
                self._leave(record.key, now)
        elif before is not None and not before.includes(self._region):
            self.on_enter(record.key)

    def _leave(self, device: str, scope: Scope) -> None:
        gone = self._store.purge_device(device, self._ledger.global_attributes)
        gone += sum(p.purge_device(device) for p in self._purgers)
        self._disconnect(device)
        if gone:
            log.info("device %s now keeps its data in %s only: deleted %d item(s) of it in %s", device,
                     ", ".join(scope.listed()), gone, self._region)
