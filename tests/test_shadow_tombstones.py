"""A shadow's stored form stays bounded: deletes of absent keys are not stored, writes a newer
ancestor hides go at once, tombstones go after the retention period, and collecting them
neither changes any document nor lets a late write resurrect a deleted leaf."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.domain import leaves
from geofleet.domain.hlc import HLC, Clock
from geofleet.domain.horizon import TombstoneHorizon
from geofleet.domain.names import CLASSIC, ThingName
from geofleet.domain.shadow import (
    MAX_STORED_LEAVES,
    Shadow,
    ShadowError,
    UpdateResult,
    apply_update,
    delete,
    merge_remote,
    parse_update,
)
from geofleet.replication.wire import change_to_json, parse_batch
from geofleet.services.shadows import ShadowService
from geofleet.store.sqlite import SqliteStore
from tests.helpers import examples
from tests.test_leaves import fold, op_sets

T0 = 1_700_000_000


def update(current: Shadow, state: dict[str, Any], now: int, region: str = "r1",
           horizon: HLC | None = None) -> UpdateResult:
    return apply_update(current, parse_update(json.dumps({"state": state}).encode()), now,
                        hlc=HLC(now * 1000), region=region, horizon=horizon)


def nulls(first: int, count: int) -> dict[str, None]:
    return {f"k{i}": None for i in range(first, first + count)}


# --- deletes of absent keys --------------------------------------------------------------------


def test_forty_updates_of_nulls_on_absent_keys_store_nothing() -> None:
    shadow = update(Shadow(), {"reported": {"on": True}}, T0).shadow
    for n in range(40):
        result = update(shadow, {"reported": nulls(n * 450, 450), "desired": nulls(n, 3)}, T0 + n + 1)
        assert [op for op, entry in result.ops.items() if entry[2]] == [], "no tombstone for an absent key"
        shadow = result.shadow
    assert shadow.state == {"reported": {"on": True}}
    assert shadow.version == 41
    assert len(shadow.leaves) == 2
    assert len(json.dumps(shadow.to_json())) < 400


def test_a_null_on_a_present_key_is_still_a_tombstone() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1, "b": {"c": 2}}}, T0).shadow
    result = update(shadow, {"reported": {"a": None, "b": {"c": None, "zz": None}, "absent": None}}, T0 + 1)
    deleted = sorted(path for path, entry in result.ops.items() if entry[2])
    assert deleted == [json.dumps(["reported", "a"]), json.dumps(["reported", "b", "c"])]
    assert result.shadow.state == {}, "emptied objects and sections disappear, as before"


def test_a_null_under_a_scalar_still_removes_the_scalar() -> None:
    """Unchanged behaviour: a delete below a scalar hides it, so it is not idle."""
    shadow = update(Shadow(), {"reported": {"a": 5, "b": 1}}, T0).shadow
    assert update(shadow, {"reported": {"a": {"x": None}}}, T0 + 1).shadow.state == {"reported": {"b": 1}}


def test_nulls_on_a_deleted_shadow_store_nothing() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1}}, T0).shadow
    shadow, _, _ = delete(shadow, "t", None, T0 + 1, hlc=HLC((T0 + 1) * 1000), region="r1")
    for n in range(10):
        shadow = update(shadow, {"reported": nulls(n * 100, 100)}, T0 + 2 + n).shadow
    assert shadow.state == {}
    assert len(shadow.leaves) <= 3


# --- writes hidden by a newer ancestor go at once ------------------------------------------------


def test_a_deleted_object_keeps_one_tombstone_not_one_per_former_leaf() -> None:
    shadow = Shadow()
    for n in range(20):
        fields = {f"k{i}": i for i in range(n * 50, n * 50 + 50)}
        shadow = update(shadow, {"reported": {"obj": fields}}, T0 + 2 * n).shadow
        shadow = update(shadow, {"reported": {"obj": None}}, T0 + 2 * n + 1).shadow
    assert sorted(shadow.leaves) == sorted([leaves.EXISTS, json.dumps(["reported", "obj"])])


def test_deleting_the_shadow_drops_every_older_entry() -> None:
    shadow = update(Shadow(), {"reported": {f"k{i}": i for i in range(300)}}, T0).shadow
    deleted, _, _ = delete(shadow, "t", None, T0 + 1, hlc=HLC((T0 + 1) * 1000), region="r1")
    assert list(deleted.leaves) == [leaves.ROOT]


# --- tombstones go after the retention period ----------------------------------------------------


def test_tombstones_older_than_the_horizon_are_collected_and_the_floor_replicates() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1, "b": 2}}, T0).shadow
    shadow = update(shadow, {"reported": {"a": None}}, T0 + 1).shadow
    assert json.dumps(["reported", "a"]) in shadow.leaves
    later = update(shadow, {"reported": {"c": 3}}, T0 + 10, horizon=HLC((T0 + 5) * 1000))
    assert json.dumps(["reported", "a"]) not in later.shadow.leaves
    assert later.shadow.state == {"reported": {"b": 2, "c": 3}}
    assert leaves.FLOOR in later.ops, "the floor travels with the update's writes"
    peer = merge_remote(shadow, later.ops, T0 + 11).shadow
    assert peer.leaves == later.shadow.leaves, "the peer collects the same entries"


def test_nothing_to_collect_writes_no_floor() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1}}, T0).shadow
    assert leaves.FLOOR not in update(shadow, {"reported": {"b": 1}}, T0 + 10, horizon=HLC(T0 * 1000)).ops


def test_a_late_write_older_than_a_collected_tombstone_does_not_resurrect() -> None:
    from_r2 = leaves.ops_from_patch({"reported": {"k": 1}}, HLC(T0 * 1000), "r2")
    shadow = merge_remote(update(Shadow(), {"reported": {"x": 0}}, T0 - 1).shadow, from_r2, T0).shadow
    shadow = update(shadow, {"reported": {"k": None}}, T0 + 1).shadow
    collected = update(shadow, {"reported": {"y": 1}}, T0 + 100, horizon=HLC((T0 + 50) * 1000)).shadow
    assert json.dumps(["reported", "k"]) not in collected.leaves
    replayed = merge_remote(collected, from_r2, T0 + 101)
    assert not replayed.changed
    assert replayed.shadow.state == {"reported": {"x": 0, "y": 1}}


def test_a_write_newer_than_the_floor_still_merges() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1}}, T0).shadow
    shadow = update(shadow, {"reported": {"a": None}}, T0 + 1).shadow
    shadow = update(shadow, {"reported": {"b": 1}}, T0 + 100, horizon=HLC((T0 + 50) * 1000)).shadow
    concurrent = leaves.ops_from_patch({"reported": {"a": 7}}, HLC((T0 + 60) * 1000), "r2")
    assert merge_remote(shadow, concurrent, T0 + 101).shadow.state == {"reported": {"a": 7, "b": 1}}


@settings(max_examples=examples(300), deadline=None)
@given(op_sets(), st.integers(1, 6), st.randoms())
def test_collecting_keeps_every_document_and_every_region_converges(ops: list[leaves.Leaves], floor_s: int,
                                                                    rnd: Any) -> None:
    """The retention rule: a region raises the floor once every write older than it has
    arrived. Another region may get the floor at any point after its own older writes, and in
    any order; both end with the same map, and the document is the one without collection."""
    floor = HLC(floor_s * 1000)
    everything = fold(ops)
    collector = leaves.merge(everything, leaves.collect(everything, floor, "r1"))[0]
    assert leaves.materialize(collector) == leaves.materialize(everything)
    older = [op for op in ops if min(e[0] for e in op.values()) < floor.encode()]
    newer = [op for op in ops if op not in older]
    rnd.shuffle(older)
    rnd.shuffle(newer)
    cut = rnd.randint(0, len(newer))
    replica = fold([*older, *newer[:cut], collector, *newer[cut:]])
    assert replica == collector
    assert leaves.merge(collector, fold(ops))[0] == collector, "replaying everything changes nothing"


# --- the stored size stays bounded ---------------------------------------------------------------


def test_past_the_stored_entry_limit_a_local_update_is_refused_with_413() -> None:
    shadow = Shadow()
    now = T0

    def fill_until_refused() -> None:
        nonlocal shadow, now
        for _ in range(MAX_STORED_LEAVES // 500 + 2):
            shadow = update(shadow, {"reported": {f"k{now}-{i}": 0 for i in range(500)}}, now).shadow
            shadow = update(shadow, {"reported": {f"k{now}-{i}": None for i in range(500)}}, now + 1).shadow
            now += 2

    with pytest.raises(ShadowError) as info:
        fill_until_refused()
    assert info.value.status == 413
    assert len(shadow.leaves) <= MAX_STORED_LEAVES
    collected = update(shadow, {"reported": {"ok": 1}}, now + 10, horizon=HLC(now * 1000))
    assert len(collected.shadow.leaves) < 10, "after the retention period the shadow takes updates again"


# --- the same through the shadow service and a real SQLite file ----------------------------------


def _stored_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT sum(length(doc)) FROM shadows").fetchone()[0])


def test_the_service_stores_a_bounded_document(tmp_path: Path) -> None:
    published: list[str] = []

    async def publish(topic: str, _: bytes) -> None:
        published.append(topic)

    path = tmp_path / "region.db"
    store = SqliteStore(path)
    horizon = TombstoneHorizon(grace_s=0.0)
    horizon.agreed(HLC(2**62))  # as if every peer had agreed after everything written here
    service = ShadowService(store, Clock(), "r1", publish, horizon)

    thing = ThingName("t1")

    def current() -> Shadow:
        shadow = store.get_shadow("t1", "")
        assert shadow is not None
        return shadow

    async def scenario() -> None:
        await service.update(thing, CLASSIC, b'{"state":{"reported":{"on":true}}}')
        for n in range(40):
            body = {"state": {"reported": nulls(n * 450, 450)}}
            await service.update(thing, CLASSIC, json.dumps(body, separators=(",", ":")).encode())
        await service.update(thing, CLASSIC, b'{"state":{"desired":{"gone":1}}}')
        await service.update(thing, CLASSIC, b'{"state":{"desired":{"gone":null}}}')
        deadline = time.monotonic() + 10
        while json.dumps(["desired", "gone"]) in current().leaves:  # until the clock passes the tombstone
            assert time.monotonic() < deadline, "the tombstone was never collected"
            await service.update(thing, CLASSIC, b'{"state":{"desired":{"x":1}}}')

    try:
        asyncio.run(scenario())
        shadow = store.get_shadow("t1", "")
        assert shadow is not None
        assert shadow.state == {"reported": {"on": True}, "desired": {"x": 1}}
        assert json.dumps(["desired", "gone"]) not in shadow.leaves, "retention 0: the tombstone went"
        assert _stored_bytes(path) < 1000
    finally:
        store.close()


def test_a_horizon_past_the_update_itself_never_refuses_the_update() -> None:
    shadow = update(Shadow(), {"reported": {"a": 1, "b": 1}}, T0).shadow
    after = update(shadow, {"reported": {"a": None}}, T0 + 1, horizon=HLC((T0 + 100) * 1000)).shadow
    assert after.state == {"reported": {"b": 1}}
    assert update(after, {"reported": {"c": 2}}, T0 + 2).shadow.state == {"reported": {"b": 1, "c": 2}}


def test_the_floor_travels_through_the_change_log_and_the_wire(tmp_path: Path) -> None:
    first = update(Shadow(), {"reported": {"a": 1, "b": 2}}, T0)
    second = update(first.shadow, {"reported": {"a": None}}, T0 + 1)
    third = update(second.shadow, {"reported": {"c": 3}}, T0 + 10, horizon=HLC((T0 + 5) * 1000))
    store = SqliteStore(tmp_path / "r1.db")
    try:
        for result in (first, second, third):
            store.put_shadow("t1", "", result.shadow, HLC.decode(max(e[0] for e in result.ops.values())), "r1",
                             ops=result.ops)
        feed = {"region": "r1", "head": store.head(), "changes": [change_to_json(c) for c in store.changes(0)]}
        batch = parse_batch(json.loads(json.dumps(feed)), "r1", 0)
    finally:
        store.close()
    replica = Shadow()
    for change in batch.changes:
        replica = merge_remote(replica, (change.body or {})["ops"], T0 + 11).shadow
    assert replica.leaves == third.shadow.leaves
    assert leaves.FLOOR in replica.leaves
    assert replica.state == {"reported": {"b": 2, "c": 3}}
