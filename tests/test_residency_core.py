"""Data residency's core, in process on real SQLite files: a device's scope comes from its thing,
stored items carry it, digests are kept per scope, a region outside the scope keeps the thing's
stub only, the peer API shows a peer only what it may hold, and a receiver drops what it may not.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from geofleet.domain.digest import BUCKETS
from geofleet.domain.hlc import Clock
from geofleet.domain.names import ShadowName, ThingName
from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import EVERYWHERE, SHADOW_KIND, Scope, WrongRegion, stub, subject
from geofleet.domain.shadow import Shadow
from geofleet.replication.antientropy import bucket_contents, differing_scoped
from geofleet.replication.wire import BatchError, parse_batch
from geofleet.store.base import Change
from geofleet.store.sqlite import SqliteStore
from tests.residency_stack import Stack

EU, US, AP = "eu-west-1", "us-east-1", "ap-southeast-1"


def thing_body(name: str, regions: str | None, **attributes: str) -> dict[str, Any]:
    attrs = dict(attributes)
    if regions is not None:
        attrs["geofleet:regions"] = regions
    return {"thingName": name, "thingId": f"id-{name}", "thingTypeName": None, "attributes": attrs, "version": 1}


def test_scope_text_subjects_and_stub() -> None:
    assert Scope.of_thing(thing_body("d", f"{EU},{AP}")).encode() == f"{AP},{EU}"
    assert Scope.of_thing(thing_body("d", None)).encode() == EVERYWHERE
    assert Scope.of_thing(None).includes(US), "no thing, no scope: everywhere"
    assert Scope.decode(f"{AP},{EU}") == Scope.of([EU, AP])
    assert (subject(SHADOW_KIND, "d|named", ""), subject(Kind.PRESENCE.value, f"d|{EU}", "d")) == ("d", "d")
    assert subject(Kind.THING.value, "d", "") is None, "the thing record is global (its stub is)"
    assert subject(Kind.CERTIFICATE.value, "abc", "") is None
    body = thing_body("d", EU, owner="Erika Mustermann", model="x1")
    body["attributes"]["geofleet:homeRegion"] = EU
    assert stub(body) == {"thingName": "d", "thingId": "id-d", "thingTypeName": None, "version": 1,
                          "attributes": {"geofleet:regions": EU, "geofleet:homeRegion": EU}}
    assert stub(body, ("model",))["attributes"]["model"] == "x1", "a fleet may make more attributes global"  # type: ignore[index]
    assert stub(None) is None
    with pytest.raises(WrongRegion) as refused:
        Scope.of([EU]).require("d", US)
    assert refused.value.status == 421
    assert refused.value.regions == [EU]
    assert "eu-west-1" in refused.value.message


def test_items_carry_their_device_scope_and_digests_are_per_scope(tmp_path: Path) -> None:
    store, clock = SqliteStore(tmp_path / "s.db"), Clock()
    store.bucket_digests()  # built now, so that every write below keeps it current
    store.put(Record(Kind.THING, "de", thing_body("de", EU), clock.now(), EU))
    store.put_shadow("de", "", Shadow({"reported": {"x": 1}}, {}, 1, 0), clock.now(), EU)
    store.put(Record(Kind.PRESENCE, f"de|{EU}", {"device": "de"}, clock.now(), EU, "de"))
    store.put_shadow("free", "", Shadow({"reported": {"x": 1}}, {}, 1, 0), clock.now(), EU)
    assert store.scope_of("de") == EU
    assert store.scope_of("free") == EVERYWHERE
    digests = store.bucket_digests()
    assert set(digests) == {EU, EVERYWHERE}
    assert sum(len(store.bucket_items(b, EU)[1]) for b in range(BUCKETS)) == 1
    assert sum(len(store.bucket_items(b, EU)[0]) for b in range(BUCKETS)) == 1, "the presence entry"
    assert SqliteStore(tmp_path / "s.db").bucket_digests() == digests, "kept current = a full rebuild"

    store.put(Record(Kind.THING, "de", thing_body("de", f"{EU},{US}"), clock.now(), EU))  # widened
    moved = store.bucket_digests()
    assert set(moved) == {f"{EU},{US}", EVERYWHERE}, "the device's items moved to its new scope"
    assert SqliteStore(tmp_path / "s.db").bucket_digests() == moved

    store.put(Record(Kind.THING, "de", None, clock.now(), EU))  # deleted: its shadow outlives it
    assert store.scope_of("de") == f"{EU},{US}", "a thing's tombstone keeps the scope of its shadows"

    assert store.purge_device("de") == 2
    assert store.get_shadow("de", "") is None
    assert store.records(Kind.PRESENCE, ref="de") == []
    assert SqliteStore(tmp_path / "s.db").bucket_digests() == store.bucket_digests() == {
        EVERYWHERE: store.bucket_digests()[EVERYWHERE]}


def test_a_store_from_before_residency_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE records (kind TEXT NOT NULL, key TEXT NOT NULL, ref TEXT NOT NULL DEFAULT '', body TEXT,
            hlc TEXT NOT NULL, origin TEXT NOT NULL, bucket INTEGER NOT NULL, PRIMARY KEY (kind, key));
        CREATE TABLE shadows (thing TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL, hlc TEXT NOT NULL,
            origin TEXT NOT NULL, bucket INTEGER NOT NULL, item TEXT NOT NULL, PRIMARY KEY (thing, name));
    """)
    db.close()
    clock = Clock()
    # written through an old-schema table, as the previous version did (no scope column)
    db = sqlite3.connect(path)
    db.execute("INSERT INTO records VALUES ('thing', 'de', '', ?, ?, 'eu-west-1', 7)",
               ('{"thingName":"de","attributes":{"geofleet:regions":"eu-west-1"},"version":1}', clock.now().encode()))
    db.execute("INSERT INTO shadows VALUES ('de', '', '{\"state\":null,\"metadata\":{},\"version\":1}', ?, "
               "'eu-west-1', 3, '00ff')", (clock.now().encode(),))
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert store.scope_of("de") == EU
    assert set(store.bucket_digests()) == {EU, EVERYWHERE}, "the shadow was scoped from its thing"


def test_a_region_outside_the_scope_keeps_the_stub_but_logs_the_full_thing(tmp_path: Path) -> None:
    us = Stack(tmp_path, US)
    body = thing_body("de", EU, owner="Erika")
    us.ledger.put(Kind.THING, "de", body)  # e.g. provisioning served in us-east-1
    kept = us.store.get(Kind.THING, "de")
    assert kept is not None
    assert kept.body == stub(body)
    assert [c.body for c in us.store.changes(0)] == [body], "the region in scope gets the whole record"


def test_the_peer_view_shows_a_peer_only_what_it_may_hold(tmp_path: Path) -> None:
    eu, us = Stack(tmp_path, EU), Stack(tmp_path, US)
    body = thing_body("de", EU, owner="Erika")
    eu.ledger.put(Kind.THING, "de", body)
    asyncio.run(eu.shadows.update(ThingName("de"), ShadowName(""), b'{"state":{"reported":{"x":1}}}'))
    asyncio.run(eu.shadows.update(ThingName("free"), ShadowName(""), b'{"state":{"reported":{"y":2}}}'))
    changes = eu.store.changes(0)
    to_us = [seen for change in changes if (seen := eu.view.change(change, US)) is not None]
    assert [(c.kind, c.key) for c in to_us] == [("thing", "de"), (SHADOW_KIND, "free|")]
    assert to_us[0].body == stub(body)
    assert [eu.view.change(c, EU) for c in changes] == changes, "a region in scope sees everything"

    assert set(eu.view.digests(US)) == {EVERYWHERE}, "no digest of a scope the peer is not in"
    assert set(eu.view.digests(EU)) == {EU, EVERYWHERE}

    us.pull_from(eu)
    record = us.store.get(Kind.THING, "de")
    assert record is not None
    assert record.body == stub(body)
    assert us.store.get_shadow("de", "") is None
    assert us.store.get_shadow("free", "") is not None
    bucket = next(b for b in range(BUCKETS) if us.store.bucket_items(b, EVERYWHERE)[0])
    assert bucket_contents(us.store, us.view, EU, bucket, EVERYWHERE)["records"] == [], \
        "a stub is never served to a region in scope: it would take it for the whole record"
    served = bucket_contents(us.store, us.view, AP, bucket, EVERYWHERE)["records"]
    assert [r["body"] for r in served] == [stub(body)]


def test_a_receiver_drops_what_its_scope_excludes_whatever_the_sender_believed(tmp_path: Path) -> None:
    eu, us = Stack(tmp_path, EU), Stack(tmp_path, US)
    us.ledger.merge(Record(Kind.THING, "de", thing_body("de", EU), eu.clock.now(), EU))
    late = Change(1, eu.clock.now(), EU, SHADOW_KIND, "de|", "",
                  {"ops": {'["reported","x"]': [eu.clock.now().encode(), EU, False, 1]}})
    presence = Change(2, eu.clock.now(), EU, Kind.PRESENCE.value, f"de|{EU}", "de", {"device": "de"})
    assert us.applier.change(late) is None
    us.applier.change(presence)
    assert us.store.get_shadow("de", "") is None
    assert us.store.records(Kind.PRESENCE) == []
    assert us.applier.dropped == 2


def test_leaving_a_scope_deletes_the_device_data_and_entering_asks_for_a_sync(tmp_path: Path) -> None:
    eu, us = Stack(tmp_path, EU), Stack(tmp_path, US)
    entered: list[str] = []
    us.residency.on_enter = entered.append
    eu.ledger.put(Kind.THING, "de", thing_body("de", f"{EU},{US}", owner="Erika"))
    asyncio.run(eu.shadows.update(ThingName("de"), ShadowName(""), b'{"state":{"reported":{"x":1}}}'))
    cursor = us.pull_from(eu)
    assert us.store.get_shadow("de", "") is not None

    eu.ledger.put(Kind.THING, "de", {**thing_body("de", EU, owner="Erika"), "version": 2})  # narrowed
    cursor = us.pull_from(eu, cursor)
    assert us.store.get_shadow("de", "") is None, "us-east-1 left the scope: the shadow went"
    assert set(us.store.bucket_digests()) == {EVERYWHERE}

    eu.ledger.put(Kind.THING, "de", {**thing_body("de", f"{EU},{US}", owner="Erika"), "version": 3})
    us.pull_from(eu, cursor)
    assert entered == ["de"], "entering a scope asks for anti-entropy, which brings the data"
    mismatched = differing_scoped(us.store.bucket_digests(), eu.view.digests(US), US, EU)
    assert mismatched, "the shadow is missing in us-east-1, and the digests of the shared scope say so"
    assert {scope for scope, _ in mismatched} == {f"{EU},{US}"}


def test_shadows_are_refused_outside_the_scope(tmp_path: Path) -> None:
    us = Stack(tmp_path, US)
    us.ledger.merge(Record(Kind.THING, "de", thing_body("de", EU), Clock().now(), EU))
    with pytest.raises(WrongRegion, match="eu-west-1"):
        us.shadows.get(ThingName("de"), ShadowName(""))
    with pytest.raises(WrongRegion):
        asyncio.run(us.shadows.update(ThingName("de"), ShadowName(""), b'{"state":{"reported":{"x":1}}}'))
    assert us.store.get_shadow("de", "") is None


def test_through_lets_the_cursor_pass_changes_the_peer_may_not_see() -> None:
    data = {"region": EU, "head": 9, "through": 9, "changes": []}
    assert parse_batch(data, EU, 4).through == 9
    assert parse_batch({"region": EU, "head": 9, "changes": []}, EU, 4).through == 4, "an older peer"
    for bad in (3, 10, "9"):
        with pytest.raises(BatchError, match="through"):
            parse_batch({**data, "through": bad}, EU, 4)
