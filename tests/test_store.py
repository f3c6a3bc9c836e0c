"""The SQLite store on real files: every write is logged in the same transaction, data survives
reopening, and the change log gives a restarted clock its high-water mark."""

from __future__ import annotations

from pathlib import Path

import pytest

from geofleet.domain.hlc import HLC, ZERO, Clock
from geofleet.domain.records import Kind, Record
from geofleet.domain.shadow import Shadow
from geofleet.store.sqlite import SqliteStore


def _thing(name: str, clock: Clock, body: dict[str, object] | None = None) -> Record:
    return Record(Kind.THING, name, {"thingName": name} if body is None else body, clock.now(), "r1")


def test_put_get_and_change_log_together(tmp_path: Path) -> None:
    store, clock = SqliteStore(tmp_path / "s.db"), Clock()
    store.put(_thing("a", clock))
    store.put(Record(Kind.THING, "a", None, clock.now(), "r1"))
    store.put(Record(Kind.THING, "remote", {"thingName": "remote"}, clock.now(), "r2"), log=False)
    record = store.get(Kind.THING, "a")
    assert record is not None, "a delete is kept as a tombstone"
    assert record.deleted, "a delete is kept as a tombstone"
    assert [r.key for r in store.records(Kind.THING)] == ["remote"], "tombstones are not listed"
    changes = store.changes(0)
    assert [(c.kind, c.key, c.body) for c in changes] == [("thing", "a", {"thingName": "a"}), ("thing", "a", None)]
    assert store.changes(changes[0].seq) == changes[1:]
    assert store.head() == changes[-1].seq, "a write applied from another region is not logged again"
    assert store.get(Kind.THING, "remote") is not None


def test_prefix_and_ref_queries(tmp_path: Path) -> None:
    store, clock = SqliteStore(tmp_path / "s.db"), Clock()
    for key, ref in [("c1|p1", "p1"), ("c1|p2", "p2"), ("c10|p1", "p1"), ("c2|p1", "p1")]:
        store.put(Record(Kind.POLICY_ATTACHMENT, key, {"k": key}, clock.now(), "r1", ref))
    assert [r.key for r in store.records(Kind.POLICY_ATTACHMENT, prefix="c1|")] == ["c1|p1", "c1|p2"]
    assert [r.key for r in store.records(Kind.POLICY_ATTACHMENT, ref="p1")] == ["c10|p1", "c1|p1", "c2|p1"]


def test_data_survives_reopen_and_clock_resumes_past_the_log(tmp_path: Path) -> None:
    future = HLC(10**13 - 1, 5)
    store = SqliteStore(tmp_path / "s.db")
    assert store.last_hlc() == ZERO
    store.put(Record(Kind.THING, "t", {"thingName": "t"}, future, "r1"))
    store.put_shadow("t", "", Shadow({"reported": {"x": 1}}, {}, 1, 0), future, "r1")
    store.close()
    reopened = SqliteStore(tmp_path / "s.db")
    assert reopened.get(Kind.THING, "t") is not None
    shadow = reopened.get_shadow("t", "")
    assert shadow is not None
    assert shadow.state == {"reported": {"x": 1}}
    assert reopened.shadow_names("t") == [""]
    assert Clock(start=reopened.last_hlc()).now() > future


def test_failed_transaction_leaves_neither_record_nor_log(tmp_path: Path) -> None:
    store, clock = SqliteStore(tmp_path / "s.db"), Clock()
    store.put(_thing("ok", clock))

    def fail_half_way() -> None:
        with store.atomic():
            store.put(_thing("x", clock))
            store.set_cursor("peer", "all", 7)
            raise RuntimeError("the apply failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        fail_half_way()
    assert store.get(Kind.THING, "x") is None
    assert store.cursor("peer", "all") == 0
    assert len(store.changes(0)) == 1


def test_only_tombstones_every_region_holds_are_collected(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    old, seen, later = HLC(1_000, 0), HLC(2_000, 0), HLC(5_000, 0)
    store.put(Record(Kind.THING, "never-confirmed", None, old, "r1"))
    store.put(Record(Kind.THING, "confirmed", None, seen, "r1"))
    store.put(Record(Kind.THING, "alive", {"thingName": "alive"}, seen, "r1"))
    store.put(Record(Kind.THING, "recent", None, later, "r1"))
    store.mark_tombstones_seen(HLC(1_500, 0), HLC(3_000, 0))  # an all-agree round covered [1.5 s, 3 s)
    assert store.collect_tombstones(HLC(4_000, 0)) == 1
    assert store.get(Kind.THING, "confirmed") is None
    assert store.get(Kind.THING, "never-confirmed") is not None, "no round proved every region had it"
    assert store.get(Kind.THING, "recent") is not None
    assert store.get(Kind.THING, "alive") is not None


def test_digests_follow_every_write_and_match_a_rebuild(tmp_path: Path) -> None:
    store, clock = SqliteStore(tmp_path / "s.db"), Clock()
    empty = store.bucket_digests()
    store.put(_thing("a", clock))
    store.put(_thing("b", clock))
    store.put_shadow("a", "", Shadow({"reported": {"x": 1}}, {}, 1, 0, {'["@"]': ["h", "r", False, True]}),
                     clock.now(), "r1")
    store.put(_thing("b", clock))  # a new version replaces the old item
    store.put(Record(Kind.THING, "a", None, clock.now(), "r1"))  # a tombstone is not an item
    incremental = store.bucket_digests()
    assert SqliteStore(tmp_path / "s.db").bucket_digests() == incremental, "same as a full rebuild"
    assert empty == {}
    store.put(Record(Kind.THING, "b", None, clock.now(), "r1"))
    assert len(store.bucket_digests()) == 1, "only the shadow is left"
