"""Registry replication applied in any order, any number of times, gives the same replica:
records wait for their dependencies, and REVOKED stays revoked."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.domain.digest import BUCKETS
from geofleet.domain.hlc import Clock
from geofleet.domain.names import ThingName
from geofleet.domain.policy import default_device_policy
from geofleet.domain.records import CertificateStatus, Kind, Record
from geofleet.domain.residency import EVERYWHERE
from geofleet.pki.ca import create_intermediate, create_root, load_csr, make_csr, new_key
from geofleet.services.registry import Registry
from geofleet.store.sqlite import SqliteStore
from tests.helpers import examples

AUTHORITY = create_intermediate(create_root("t"), "r1")


def registry(region: str = "replica") -> tuple[Registry, SqliteStore]:
    store = SqliteStore(":memory:")
    return Registry(store, Clock(), region, "000000000000", AUTHORITY), store


def history() -> list[Record]:
    """A source region's change log: things with a type, certificates, policies, attachments,
    updates, a revocation and deletes."""
    source, store = registry("r1")
    source.thing_types.create("sensor")
    source.policies.create("p", json.dumps(default_device_policy()))
    for i in range(3):
        source.things.create(ThingName(f"t{i}"), "sensor" if i else None, {"n": str(i)})
        cert = source.certificates.create_from_csr(load_csr(make_csr(new_key(), f"t{i}")), True)["certificateId"]
        source.policies.attach("p", cert)
        source.principals.attach(f"t{i}", cert)
    source.things.update("t1", attributes={"n": "one"})
    certs = [c["certificateId"] for c in source.certificates.all()]
    source.certificates.update(certs[0], CertificateStatus.REVOKED)
    thing_of_last = source.principals.things_of(certs[2])[0]
    source.principals.detach(thing_of_last, certs[2])
    source.things.delete(thing_of_last)
    return [Record(Kind(c.kind), c.key, c.body, c.hlc, c.origin, c.ref) for c in store.changes(0, 10_000)]


HISTORY = history()


def all_records(store: SqliteStore) -> list[Record]:
    return [record for bucket in range(BUCKETS) for record in store.bucket_items(bucket, EVERYWHERE)[0]]


def snapshot(store: SqliteStore) -> list[tuple[str, str, str, str, bool]]:
    return sorted((r.kind.value, r.key, r.hlc.encode(), r.origin, r.deleted) for r in all_records(store))


def replay(order: list[Record]) -> SqliteStore:
    replica, store = registry()
    for record in order:
        replica.ledger.merge(record)
    return store


EXPECTED = snapshot(replay(HISTORY))


@settings(max_examples=examples(60), deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 5))
def test_any_order_with_duplicates_converges(rnd: random.Random, duplicates: int) -> None:
    order = list(HISTORY) + rnd.sample(HISTORY, duplicates)
    rnd.shuffle(order)
    store = replay(order)
    assert snapshot(store) == EXPECTED
    assert store.parked() == 0, "every parked record found its dependency"


def test_an_attachment_before_its_thing_and_certificate_is_parked_then_applied() -> None:
    attachment = next(r for r in HISTORY if r.kind is Kind.THING_PRINCIPAL)
    replica, store = registry()
    assert replica.ledger.merge(attachment) is False
    assert store.parked() == 1
    assert store.get(Kind.THING_PRINCIPAL, attachment.key) is None
    for record in HISTORY:
        replica.ledger.merge(record)
    assert store.parked() == 0
    assert snapshot(store) == EXPECTED


def test_revoked_is_never_undone_by_a_later_write() -> None:
    replica, store = registry()
    for record in HISTORY:
        replica.ledger.merge(record)
    revoked = next(r for r in all_records(store)
                   if r.kind is Kind.CERTIFICATE and (r.body or {})["status"] == "REVOKED")
    later = Clock(start=revoked.hlc).now()
    reactivated = Record(Kind.CERTIFICATE, revoked.key, {**(revoked.body or {}), "status": "ACTIVE"}, later, "r9")
    assert replica.ledger.merge(reactivated) is False
    assert replica.certificates.status(revoked.key) is CertificateStatus.REVOKED
