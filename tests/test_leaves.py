"""The per-leaf shadow merge is a CRDT: merging is commutative, associative and idempotent, and
the document every region shows depends only on which writes it has seen."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.domain import leaves
from geofleet.domain.hlc import HLC
from geofleet.domain.shadow import Shadow, apply_update, merge_remote, parse_update
from tests.helpers import examples

keys = st.sampled_from(["a", "b", "c"])
scalars = st.one_of(st.integers(-3, 3), st.booleans(), st.sampled_from(["x", "y"]),
                    st.lists(st.integers(0, 2), max_size=2))
values: st.SearchStrategy[Any] = st.recursive(
    st.one_of(scalars, st.none()), lambda inner: st.dictionaries(keys, inner, min_size=1, max_size=2), max_leaves=4)
patches = st.dictionaries(st.sampled_from(["desired", "reported"]),
                          st.one_of(st.none(), st.dictionaries(keys, values, min_size=1, max_size=3)),
                          min_size=1, max_size=2)


@st.composite
def op_sets(draw: st.DrawFn) -> list[leaves.Leaves]:
    """Writes from three regions with random (possibly equal) clocks, deletes included."""
    result = []
    for _ in range(draw(st.integers(1, 6))):
        hlc = HLC(draw(st.integers(1, 5)) * 1000, draw(st.integers(0, 2)))
        region = draw(st.sampled_from(["r1", "r2", "r3"]))
        if draw(st.integers(0, 9)) == 0:
            result.append(leaves.ops_delete(hlc, region))
        else:
            result.append(leaves.ops_from_patch(draw(patches), hlc, region))
    return result


def fold(ops: list[leaves.Leaves]) -> leaves.Leaves:
    state: leaves.Leaves = {}
    for op in ops:
        state, _ = leaves.merge(state, op)
    return state


@settings(max_examples=examples(300))
@given(op_sets(), st.randoms())
def test_any_order_gives_the_same_leaves_and_document(ops: list[leaves.Leaves], rnd: Any) -> None:
    shuffled = list(ops)
    rnd.shuffle(shuffled)
    assert fold(ops) == fold(shuffled)
    assert leaves.materialize(fold(ops)) == leaves.materialize(fold(shuffled))


@settings(max_examples=examples(200))
@given(op_sets(), op_sets(), op_sets())
def test_merge_is_associative_commutative_and_idempotent(x: list[leaves.Leaves], y: list[leaves.Leaves],
                                                          z: list[leaves.Leaves]) -> None:
    a, b, c = fold(x), fold(y), fold(z)

    def m(p: leaves.Leaves, q: leaves.Leaves) -> leaves.Leaves:
        return leaves.merge(p, q)[0]

    assert m(m(a, b), c) == m(a, m(b, c))
    assert m(a, b) == m(b, a)
    assert m(a, a) == a
    assert leaves.merge(m(a, b), b)[1] is False, "merging what is already there changes nothing"


def test_concurrent_writes_to_different_fields_both_survive() -> None:
    base = apply_update(Shadow(), parse_update(b'{"state":{"desired":{"x":0}}}'), 1, region="r1")
    in_r1 = apply_update(base.shadow, parse_update(b'{"state":{"desired":{"color":"red"}}}'), 2,
                         hlc=HLC(2000, 0), region="r1")
    in_r2 = apply_update(base.shadow, parse_update(b'{"state":{"desired":{"size":2}}}'), 2,
                         hlc=HLC(2000, 0), region="r2")
    r1 = merge_remote(in_r1.shadow, in_r2.ops, 3)
    r2 = merge_remote(in_r2.shadow, in_r1.ops, 3)
    assert r1.shadow.state == r2.shadow.state == {"desired": {"x": 0, "color": "red", "size": 2}}
    assert r1.changed, "each region keeps its own version"
    assert r1.shadow.version == in_r1.shadow.version + 1, "each region keeps its own version"
    assert r1.delta is not None
    assert r1.delta["state"]["size"] == 2


def test_a_remote_write_that_loses_changes_nothing_visible() -> None:
    newer = apply_update(Shadow(), parse_update(b'{"state":{"reported":{"t":2}}}'), 5, hlc=HLC(5000, 0), region="r1")
    older = leaves.ops_from_patch({"reported": {"t": 1}}, HLC(4000, 0), "r2")
    result = merge_remote(newer.shadow, older, 6)
    assert not result.changed
    assert result.shadow.version == newer.shadow.version
    assert result.shadow.state == {"reported": {"t": 2}}


def test_a_delete_in_one_region_and_a_later_update_in_another() -> None:
    created = apply_update(Shadow(), parse_update(b'{"state":{"reported":{"a":1,"b":2}}}'), 1,
                           hlc=HLC(1000, 0), region="r1")
    deleted = leaves.ops_delete(HLC(2000, 0), "r1")
    later = leaves.ops_from_patch({"reported": {"b": 3}}, HLC(3000, 0), "r2")
    state, _ = leaves.materialize(fold([created.ops, later, deleted]))
    assert state == {"reported": {"b": 3}}, "only what was written after the delete survives"
