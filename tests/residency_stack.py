"""In-process regions for the residency tests: the real store, ledger, thing and shadow services,
residency and replication's applier and peer view, joined by a simulated network that moves
changes the way replication does (``/v1/changes`` through the wire format, anti-entropy through
per-scope digests and buckets), without sockets, so hypothesis can run hundreds of histories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geofleet.domain.endpoints import REGIONS_ATTRIBUTE
from geofleet.domain.hlc import Clock
from geofleet.domain.horizon import TombstoneHorizon
from geofleet.domain.names import ShadowName, ThingName
from geofleet.domain.records import Kind
from geofleet.domain.residency import Scope
from geofleet.replication.antientropy import bucket_contents, differing_scoped
from geofleet.replication.apply import Applier, Publish
from geofleet.replication.scoping import PeerView
from geofleet.replication.server import MAX_BATCH, served_through
from geofleet.replication.wire import change_to_json, check_leaves, parse_batch, parse_hlc, parse_record
from geofleet.residency_audit import RegionFiles
from geofleet.services.ledger import Ledger
from geofleet.services.residency import Residency
from geofleet.services.shadows import ShadowService
from geofleet.services.thing_types import ThingTypes
from geofleet.services.things import Things
from geofleet.store.journal import SqliteJournal
from geofleet.store.sqlite import SqliteStore

ACCOUNT = "000000000000"
STREAM = "all"


async def _no_publish(_topic: str, _payload: bytes) -> None:
    return None


class Stack:
    """One region, in process."""

    def __init__(self, root: Path, name: str, global_attributes: tuple[str, ...] = ()) -> None:
        self.name = name
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.root / "store.db")
        self.journal = SqliteJournal(self.root / "journal.db", name)
        self.clock = Clock(start=self.store.last_hlc())
        self.ledger = Ledger(self.store, self.clock, name, global_attributes)
        self.things = Things(self.ledger, ACCOUNT, ThingTypes(self.ledger, ACCOUNT))
        self.shadows = ShadowService(self.store, self.clock, name, _no_publish, TombstoneHorizon(3600.0))
        self.residency = Residency(self.store, self.ledger, name, [self.journal])
        self.applier = Applier(self.ledger, self.shadows, self.residency)
        self.view = PeerView(self.store, name, global_attributes)

    @property
    def files(self) -> RegionFiles:
        return RegionFiles(self.root / "store.db", self.root / "journal.db", self.root / "rules.db")

    def close(self) -> None:
        self.store.close()
        self.journal.close()

    # -- what a device or an operator does here ------------------------------------------------

    def holds_thing(self, device: str) -> bool:
        return self.ledger.live(Kind.THING, device) is not None

    def create(self, device: str, scope: Scope, personal: str) -> None:
        attributes = {"owner": personal}
        if scope.regions is not None:
            attributes[REGIONS_ATTRIBUTE] = ",".join(scope.listed())
        self.things.create(ThingName(device), None, attributes)

    def rescope(self, device: str, scope: Scope, personal: str) -> None:
        regions = None if scope.regions is None else ",".join(scope.listed())
        self.things.update(device, attributes={REGIONS_ATTRIBUTE: regions, "owner": personal})

    async def write(self, device: str, value: int) -> None:
        payload = f'{{"state": {{"reported": {{"v": {value}, "at": "{self.name}"}}}}}}'.encode()
        await self.shadows.update(ThingName(device), ShadowName(""), payload)

    def shadow_state(self, device: str) -> Any:
        shadow = self.store.get_shadow(device, "")
        return None if shadow is None else shadow.state

    def thing_body(self, device: str) -> Any:
        record = self.store.get(Kind.THING, device)
        return None if record is None else record.body

    def pull_from(self, source: Stack, after: int = 0) -> int:
        """One batch of ``source``'s change log as the peer view shows it to this region, applied
        as ``replication/link.py`` does (without the wire); returns the new cursor."""
        found = source.store.changes(after, MAX_BATCH)
        shown = [seen for change in found if (seen := source.view.change(change, self.name)) is not None]
        with self.store.atomic():
            for change in shown:
                self.applier.change(change)
        return found[-1].seq if found else after


async def pull(source: Stack, target: Stack) -> bool:
    """One ``/v1/changes`` round from ``source`` to ``target`` as ``replication/server.py`` serves
    it and ``replication/link.py`` applies it; True when ``target`` has caught up."""
    cursor = target.store.cursor(source.name, STREAM)
    found, head = source.store.changes(cursor, MAX_BATCH), source.store.head()
    answer = {"region": source.name, "head": head, "through": served_through(found, cursor, MAX_BATCH, head),
              "changes": [change_to_json(seen) for change in found
                          if (seen := source.view.change(change, target.name)) is not None]}
    batch = parse_batch(answer, source.name, cursor)
    publishes: list[Publish] = []
    with target.store.atomic():
        for change in batch.changes:
            if (publish := target.applier.change(change)) is not None:
                publishes.append(publish)
        if batch.through > cursor:
            target.store.set_cursor(source.name, STREAM, batch.through)
    for publish in publishes:
        await publish()
    return batch.through >= batch.head


async def anti_entropy(source: Stack, target: Stack) -> int:
    """One anti-entropy round of ``target`` with ``source`` as ``Replication._sync_with`` runs it
    (per-scope digests the source shows the target, then the differing buckets); the number of
    (scope, bucket) pairs that differed."""
    differ = differing_scoped(target.store.bucket_digests(), source.view.digests(target.name), target.name,
                              source.name)
    publishes: list[Publish] = []
    for scope, bucket in differ:
        if not Scope.decode(scope).includes(target.name):
            raise AssertionError(f"{target.name} asked for scope {scope} it is not in")  # the server's 403
        content = bucket_contents(source.store, source.view, target.name, bucket, scope)
        records = [parse_record(r, f"record from {source.name}") for r in content["records"]]
        with target.store.atomic():
            for record in records:
                target.applier.record(record)
            for shadow in content["shadows"]:
                leaves = shadow["leaves"]
                check_leaves(leaves, shadow["key"])
                latest = max((parse_hlc(e[0], source.name) for e in leaves.values()), default=None)
                if latest is not None and (publish := target.applier.shadow(shadow["key"], leaves, latest,
                                                                             source.name)) is not None:
                    publishes.append(publish)
    for publish in publishes:
        await publish()
    return len(differ)
