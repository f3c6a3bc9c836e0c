"""The registry merge rule: last writer wins on (HLC, region), REVOKED certificates stay revoked,
and the winner for a key does not depend on the order in which versions arrive."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofleet.domain.hlc import HLC
from geofleet.domain.records import CertificateStatus, Kind, Record, pair_key, supersedes


def thing(hlc: HLC, origin: str = "us-east-1", body: dict[str, Any] | None = None) -> Record:
    return Record(Kind.THING, "t1", {"thingName": "t1"} if body is None else body, hlc, origin)


def cert(status: CertificateStatus | None, hlc: HLC, origin: str = "us-east-1") -> Record:
    """A certificate version; ``status=None`` is a tombstone."""
    body = None if status is None else {"certificateId": "c1", "status": status.value}
    return Record(Kind.CERTIFICATE, "c1", body, hlc, origin)


# --- last writer wins ---------------------------------------------------------------------------


def test_anything_supersedes_nothing() -> None:
    assert supersedes(thing(HLC(1)), None)
    assert supersedes(cert(CertificateStatus.INACTIVE, HLC(1)), None)
    assert supersedes(Record(Kind.THING, "t1", None, HLC(1), "r"), None), "a tombstone too"


def test_later_hlc_wins() -> None:
    old, new = thing(HLC(10, 0)), thing(HLC(10, 1))
    assert supersedes(new, old)
    assert not supersedes(old, new)
    assert supersedes(thing(HLC(11, 0), "a-region"), thing(HLC(10, 999), "z-region")), "HLC before origin"


def test_origin_breaks_ties_on_equal_hlc() -> None:
    a, b = thing(HLC(10, 3), "eu-west-1"), thing(HLC(10, 3), "us-east-1")
    assert supersedes(b, a)
    assert not supersedes(a, b)


def test_a_record_does_not_supersede_itself() -> None:
    record = thing(HLC(10, 3))
    assert not supersedes(record, record)


def test_tombstones_follow_last_writer_wins() -> None:
    live, tomb = thing(HLC(5)), Record(Kind.THING, "t1", None, HLC(6), "us-east-1")
    assert tomb.deleted
    assert not live.deleted
    assert supersedes(tomb, live)
    assert not supersedes(live, tomb)
    assert supersedes(thing(HLC(7)), tomb), "a later write re-creates the object"


@pytest.mark.parametrize("status", [CertificateStatus.ACTIVE, CertificateStatus.INACTIVE,
                                    CertificateStatus.PENDING_ACTIVATION])
def test_non_revoked_certificates_follow_last_writer_wins(status: CertificateStatus) -> None:
    old, new = cert(CertificateStatus.ACTIVE, HLC(5)), cert(status, HLC(6))
    assert supersedes(new, old)
    assert not supersedes(old, new)


# --- REVOKED is terminal ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [CertificateStatus.ACTIVE, CertificateStatus.INACTIVE,
                                    CertificateStatus.PENDING_ACTIVATION, None])
def test_revoked_is_never_superseded_by_a_non_revoked_version(status: CertificateStatus | None) -> None:
    revoked = cert(CertificateStatus.REVOKED, HLC(5), "eu-west-1")
    later = cert(status, HLC(10_000, 7), "us-east-1")
    assert not supersedes(later, revoked)


@pytest.mark.parametrize("status", [CertificateStatus.ACTIVE, CertificateStatus.INACTIVE,
                                    CertificateStatus.PENDING_ACTIVATION, None])
def test_revoked_supersedes_a_non_revoked_version_with_a_later_hlc(status: CertificateStatus | None) -> None:
    later = cert(status, HLC(10_000, 7), "us-east-1")
    revoked = cert(CertificateStatus.REVOKED, HLC(5), "eu-west-1")
    assert supersedes(revoked, later)


def test_revoked_versus_revoked_is_last_writer_wins() -> None:
    a, b = cert(CertificateStatus.REVOKED, HLC(5)), cert(CertificateStatus.REVOKED, HLC(6))
    assert supersedes(b, a)
    assert not supersedes(a, b)


def test_revoked_rule_applies_only_to_certificates() -> None:
    revoked_looking = thing(HLC(5), body={"thingName": "t1", "status": "REVOKED"})
    later = thing(HLC(6))
    assert supersedes(later, revoked_looking)
    assert not supersedes(revoked_looking, later)


# --- order independence -------------------------------------------------------------------------

STATUSES = [None, *CertificateStatus]


def fold(records: list[Record]) -> Record | None:
    def keep(winner: Record | None, r: Record) -> Record | None:
        return r if supersedes(r, winner) else winner
    return functools.reduce(keep, records, None)


@st.composite
def versions(draw: st.DrawFn, kind: Kind) -> list[Record]:
    """Distinct versions of one key. (HLC, origin) is unique per write: one region's clock never
    repeats, so two versions never share both. The ranges are narrow so that equal HLCs from
    different regions (the origin tie-break) come up often."""
    stamps = draw(
        st.lists(
            st.tuples(st.integers(0, 4), st.integers(0, 1), st.sampled_from(["ap-south-1", "eu-west-1", "us-east-1"])),
            min_size=1,
            max_size=12,
            unique=True,
        )
    )
    records = []
    for wall, logical, origin in stamps:
        status = draw(st.sampled_from(STATUSES))
        body = None if status is None else {"status": status.value, "n": draw(st.integers(0, 3))}
        records.append(Record(kind, "k", body, HLC(wall, logical), origin))
    return records


@given(data=st.data(), kind=st.sampled_from([Kind.CERTIFICATE, Kind.THING, Kind.POLICY_ATTACHMENT]))
def test_folding_in_any_order_gives_the_same_winner(data: st.DataObject, kind: Kind) -> None:
    records = data.draw(versions(kind))
    expected = fold(records)
    shuffled = data.draw(st.permutations(records))
    assert fold(shuffled) == expected
    assert fold(list(reversed(records))) == expected


@given(records=versions(Kind.CERTIFICATE))
def test_the_winner_supersedes_every_other_version(records: list[Record]) -> None:
    winner = fold(records)
    assert winner is not None
    for other in records:
        if other is not winner:
            assert supersedes(winner, other)
            assert not supersedes(other, winner)
    if any(r.body is not None and r.body["status"] == "REVOKED" for r in records):
        assert winner.body is not None, "a revocation is never lost"
        assert winner.body["status"] == "REVOKED", "a revocation is never lost"


def test_order_independence_on_a_concrete_history() -> None:
    history = [
        cert(CertificateStatus.ACTIVE, HLC(1), "us-east-1"),
        cert(CertificateStatus.REVOKED, HLC(2), "eu-west-1"),
        cert(CertificateStatus.INACTIVE, HLC(3), "us-east-1"),
        cert(None, HLC(4), "ap-south-1"),
    ]
    winners = [fold(list(order)) for order in itertools.permutations(history)]
    assert len(winners) == 24
    assert all(winner == history[1] for winner in winners)


def test_pair_key() -> None:
    assert pair_key("cert-1", "policy-a") == "cert-1|policy-a"
