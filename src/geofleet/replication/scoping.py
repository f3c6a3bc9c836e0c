"""What a region shows a peer: only what that peer may hold (``domain.residency``).

Every answer of the peer API passes through here: the change log, the digests and the digest
buckets. An item of a device whose scope leaves the peer out is never sent, not as a tombstone,
not as a sequence number that names it: the peer sees its log position jump (``through``). A
thing record goes to a peer outside its scope as its stub. Digests are per scope, and a peer
sees only those of the scopes it is in, so a mismatch cannot tell it that out-of-scope data
exists. The scope used is the device's *current* one here, whatever it was when the change was
written: a device that left a region's scope is never sent there again, one that entered is.
"""

from __future__ import annotations

from dataclasses import replace

from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import Scope, stub, subject
from geofleet.store.base import Change, Store


class PeerView:
    def __init__(self, store: Store, global_attributes: tuple[str, ...] = (), region: str | None = None) -> None:
        """``region``: this region (a thing it holds only as a stub is never relayed to a region
        of the device's scope, see ``record``)."""
        self._store = store
        self._global_attributes = global_attributes
        self._region = region

    def may_hold(self, device: str, peer: str) -> bool:
        return Scope.decode(self._store.scope_of(device)).includes(peer)

    def change(self, change: Change, peer: str) -> Change | None:
        """The change as ``peer`` may see it, or None when it may not see it at all."""
        if change.kind == Kind.THING.value:
            return change if self.may_hold(change.key, peer) else \
                replace(change, body=stub(change.body, self._global_attributes))
        device = subject(change.kind, change.key, change.ref)
        return change if device is None or self.may_hold(device, peer) else None

    def record(self, record: Record, peer: str) -> Record | None:
        """A record of a bucket the peer may see (its scope includes the peer): a thing is its
        stub if the peer is outside the device's scope. None for a thing this region holds only
        as its stub and the peer is in the device's scope: the stub has the full version's HLC,
        so the peer would take it for the full record and never replace it (digests compare
        versions, not bodies); the peer gets the full record from a region of the scope."""
        if record.kind is not Kind.THING or record.body is None:
            return record
        if not self.may_hold(record.key, peer):
            return replace(record, body=stub(record.body, self._global_attributes))
        if self._region is not None and not self.may_hold(record.key, self._region):
            return None
        return record

    def digests(self, peer: str) -> dict[str, dict[int, str]]:
        """This region's digests of the scopes ``peer`` is in."""
        return {scope: buckets for scope, buckets in self._store.bucket_digests().items()
                if Scope.decode(scope).includes(peer)}
