"""Data residency in the rules and the journal (issue 14).

Unit: the rules store's rows carry their device, ``purge_device`` deletes a device's outbox rows
and dead letters and keeps the outbox's size accounting right (also for a rules.db written by
the previous schema, migrated when opened); the journal's ``purge_device`` keeps ``held_bytes``
and the byte bound of ``prune`` right; a forward to a region outside the publisher's scope is
refused with a message naming the scope.

End to end, on a three-region fleet of real region processes and real paho devices over mTLS,
with a device scoped to eu-west-1 (``geofleet:regions``, as a DE -> eu-west-1 residency rule
records it): its message is not forwarded to us-east-1 and the rule's errorAction gets AWS's
error payload, while an unscoped device's is forwarded; a forward queued before its device's
scope narrowed is dead-lettered, not sent; a region refuses a forwarded message about a device
whose scope leaves it out; and a region that leaves a device's scope deletes its journal rows,
outbox rows and dead letters, and only that device's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.broker.amqtt_broker import EmbeddedBroker
from geofleet.domain.errors import GeofleetError
from geofleet.domain.hlc import Clock
from geofleet.domain.names import ThingName
from geofleet.domain.residency import WrongRegion
from geofleet.domain.rules import FleetContext
from geofleet.domain.rules_sql import Message
from geofleet.pki.ca import create_root
from geofleet.services.registry import Registry
from geofleet.services.residency import Residency
from geofleet.services.rules.actions import Matched, builtin_kinds
from geofleet.services.rules.admin import RuleAdmin
from geofleet.services.rules.engine import RulesEngine
from geofleet.store.journal import SqliteJournal
from geofleet.store.rules_sqlite import RulesStore
from geofleet.store.sqlite import SqliteStore
from tests.conftest import REGIONS, Fleet
from tests.helpers import examples, wait_for
from tests.test_broker_memory import _write_pki
from tests.test_http_hardening import peer_http
from tests.test_rules import HTTP_ENV, create_rule, observed_fleet, observer, outbox, payloads

A, B, C = REGIONS  # us-east-1, eu-west-1, ap-southeast-1
REGIONS_ATTRIBUTE = "geofleet:regions"

# -- the rules store ---------------------------------------------------------------------------


def _dead(store: RulesStore, channel: str, body: dict[str, Any], device: str | None = None) -> None:
    row_id = store.enqueue(channel, body, 0, device)
    row = next(r for r in store.batch(channel, 1000, 1 << 30) if r.id == row_id)
    store.dead_letter(channel, row, "r", {"http": {"url": "u"}}, "gave up", 1)


def test_purge_deletes_a_devices_outbox_rows_and_dead_letters_and_frees_their_room() -> None:
    store = RulesStore(":memory:", max_rows=3)
    with store.atomic():
        store.enqueue("forward:b", {"clientId": "de-1", "n": 1}, 0, "de-1")
        store.enqueue("forward:b", {"clientId": "us-1", "n": 2}, 0, "us-1")
        store.enqueue("forward:b", {"clientId": "de-1", "n": 3}, 0, "de-1")
        store.enqueue("http", {"clientId": "de-1", "n": 4}, 0)  # the device taken from the body
    _dead(store, "http", {"clientId": "de-1", "n": 5})
    _dead(store, "http", {"clientId": "us-1", "n": 6})
    assert [r.device for r in store.batch("forward:b", 10, 1 << 20)] == ["de-1", "us-1", "de-1"]

    assert store.purge_device("de-1") == 4  # two forwards, one webhook row, one dead letter
    assert [r.body["n"] for r in store.batch("forward:b", 10, 1 << 20)] == [2]
    assert store.batch("http", 10, 1 << 20) == []
    assert [d["message"]["n"] for d in store.dead_letters()] == [6]
    only = len(json.dumps({"clientId": "us-1", "n": 2}, separators=(",", ":")))
    assert store.depth() == {"forward:b": {"messages": 1, "bytes": only}}
    with store.atomic():  # the purged rows' room is free again: 3 rows at most
        store.enqueue("forward:b", {"n": 7}, 0, "x")
        store.enqueue("forward:b", {"n": 8}, 0, "x")
    assert store.depth()["forward:b"]["messages"] == 3
    assert store.purge_device("nobody") == 0


def test_a_purge_in_a_rolled_back_transaction_leaves_the_counts_as_they_were() -> None:
    store = RulesStore(":memory:")
    store.enqueue("forward:b", {"n": 1}, 0, "de-1")
    before = store.depth()

    def purge_then_fail() -> None:
        with store.atomic():
            store.purge_device("de-1")
            raise RuntimeError("the caller's transaction fails")

    with pytest.raises(RuntimeError):
        purge_then_fail()
    assert store.depth() == before
    assert len(store.batch("forward:b", 10, 1 << 20)) == 1


_OLD_SCHEMA = """
CREATE TABLE rule_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, body TEXT NOT NULL,
    bytes INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX rule_outbox_channel ON rule_outbox (channel, id);
CREATE INDEX rule_outbox_due ON rule_outbox (channel, due_ms);
CREATE TABLE rule_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), epoch TEXT NOT NULL);
CREATE TABLE rule_forward_marks (
    origin TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (origin, epoch)
);
CREATE TABLE rule_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, action TEXT NOT NULL, body TEXT NOT NULL,
    error TEXT NOT NULL, attempts INTEGER NOT NULL, failed_ms INTEGER NOT NULL
);
"""
"""rules.db as the version before issue 14 made it (no ``device`` columns)."""


def _old_rules_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    db.execute("INSERT INTO rule_epoch (id, epoch) VALUES (1, 'old-epoch')")
    for channel, body in [("forward:b", {"clientId": "de-1", "n": 1}), ("forward:b", {"clientId": "us-1", "n": 2}),
                          ("http", {"clientId": "de-1", "n": 3}), ("http", {"n": 4})]:
        text = json.dumps(body)
        db.execute("INSERT INTO rule_outbox (channel, body, bytes, due_ms, created_ms) VALUES (?, ?, ?, 0, 0)",
                   (channel, text, len(text)))
    for body in ({"clientId": "de-1"}, {"clientId": "us-1"}, {"clientId": 7}):
        db.execute("INSERT INTO rule_dead_letters (rule, action, body, error, attempts, failed_ms) "
                   "VALUES ('r', '{}', ?, 'e', 1, 0)", (json.dumps(body),))
    db.commit()
    db.close()


def test_an_old_rules_db_is_migrated_and_its_rows_can_be_purged(tmp_path: Path) -> None:
    path = tmp_path / "rules.db"
    _old_rules_db(path)
    store = RulesStore(path)
    assert store.epoch == "old-epoch"  # the same outbox: receivers' positions still hold
    assert [r.device for r in store.batch("forward:b", 10, 1 << 20)] == ["de-1", "us-1"]
    assert [r.device for r in store.batch("http", 10, 1 << 20)] == ["de-1", ""]
    indexes = {row[1] for table in ("rule_outbox", "rule_dead_letters")
               for row in store._db.execute(f"PRAGMA index_list({table})")}
    assert {"rule_outbox_device", "rule_dead_letters_device"} <= indexes
    assert store.purge_device("de-1") == 3
    assert store.depth()["forward:b"]["messages"] == 1
    assert store.depth()["http"]["messages"] == 1
    store.close()

    again = RulesStore(path)  # opening a migrated file changes nothing
    assert again.depth() == {"forward:b": {"messages": 1, "bytes": len(json.dumps({"clientId": "us-1", "n": 2}))},
                             "http": {"messages": 1, "bytes": len(json.dumps({"n": 4}))}}
    assert sorted(d["message"].get("clientId", "") for d in again.dead_letters()
                  if isinstance(d["message"].get("clientId"), str)) == ["us-1"]
    assert again.purge_device("us-1") == 2
    again.close()


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(st.sampled_from(["enqueue", "dead", "purge", "remove"]), st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["forward:x", "http"]), st.integers(0, 300)), max_size=40))
def test_the_outbox_counts_stay_those_of_the_table_whatever_is_purged(
        steps: list[tuple[str, str, str, int]]) -> None:
    store = RulesStore(":memory:")
    purged: set[str] = set()
    for op, device, channel, size in steps:
        if op == "enqueue":
            store.enqueue(channel, {"clientId": device, "pad": "x" * size}, 0, device)
            purged.discard(device)
        elif op == "dead":
            _dead(store, channel, {"clientId": device, "pad": "y" * size}, device)
            purged.discard(device)
        elif op == "purge":
            store.purge_device(device)
            purged.add(device)
        else:
            rows = store.batch(channel, 1, 1 << 30)
            with store.atomic():
                store.remove(channel, [r.id for r in rows])
    fresh = RulesStore.__new__(RulesStore)
    fresh._db = store._db
    assert store.depth() == {c: {"messages": n, "bytes": b} for c, (n, b) in sorted(fresh._read_sizes().items())}
    held = {r.device for c in ("forward:x", "http") for r in store.batch(c, 1000, 1 << 30)}
    dead = {d["message"]["clientId"] for d in store.dead_letters(1000)}
    assert not purged & (held | dead)


# -- the journal -------------------------------------------------------------------------------


def test_the_journal_purge_keeps_its_byte_accounting(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(path, A)
    sizes = {"de-1": 0, "us-1": 0}
    for n, device in enumerate(["de-1", "us-1", "de-1", "de-1", "us-1", "de-1"]):
        journal.append(f"dt/{device}/t", device, n, b"p" * (10 + n))
        sizes[device] += 10 + n
    assert journal.held_bytes() == sum(sizes.values())

    assert journal.purge_device("de-1") == 4
    assert [(e.seq, e.client_id) for e in journal.entries(0, 100)] == [(2, "us-1"), (5, "us-1")]
    assert (journal.size(), journal.held_bytes(), journal.head(), journal.first()) == (2, sizes["us-1"], 6, 2)
    assert journal.dropped() == 0  # retention dropped nothing; the purge is not counted as it
    # the byte bound of prune counts what is held, not what was purged: keeping exactly the
    # held bytes drops nothing, one byte less drops the oldest
    assert journal.prune(0, 100, sizes["us-1"]) == 0
    assert journal.prune(0, 100, sizes["us-1"] - 1) == 1
    assert journal.held_bytes() == 14
    journal.close()

    reopened = SqliteJournal(path, A)  # the running sums were rewritten, not only remembered
    assert reopened.held_bytes() == 14
    reopened.append("dt/us-1/t", "us-1", 9, b"q" * 7)
    assert reopened.held_bytes() == 21
    assert reopened.purge_device("us-1") == 2
    assert (reopened.size(), reopened.held_bytes()) == (0, 0)
    assert reopened.append("dt/x/t", "x", 10, b"r" * 3) == 8  # sequence numbers are never reused
    assert reopened.held_bytes() == 3
    assert reopened.purge_device("nobody") == 0
    assert reopened.held_bytes() == 3
    reopened.close()


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(st.sampled_from(["append", "purge"]), st.sampled_from(["a", "b", "c"]),
                          st.integers(0, 50)), max_size=40))
def test_held_bytes_is_what_the_journal_holds_after_any_purges(steps: list[tuple[str, str, int]]) -> None:
    journal = SqliteJournal(":memory:", A)
    for n, (op, device, size) in enumerate(steps):
        if op == "append":
            journal.append("t", device, n, b"x" * size)
        else:
            journal.purge_device(device)
        assert journal.held_bytes() == sum(len(e.payload) for e in journal.entries(0, 1000))


# -- the forward action's check ----------------------------------------------------------------


@pytest.fixture
def residency(tmp_path: Path) -> Iterator[tuple[Registry, Residency]]:
    store = SqliteStore(str(tmp_path / "store.db"))
    registry = Registry(store, Clock(), B, "000000000000", create_root("residency-rules"))
    yield registry, Residency(store, registry.ledger, B)
    store.close()


def test_a_forward_outside_the_publishers_scope_is_refused_naming_the_scope(
        residency: tuple[Registry, Residency]) -> None:
    registry, scopes = residency
    registry.things.create(ThingName("de-1"), attributes={REGIONS_ATTRIBUTE: "eu-west-1,eu-central-1"})
    registry.things.create(ThingName("free-1"))
    forward = builtin_kinds(frozenset(REGIONS), scopes)["forward"]

    def prepare(client_id: str, region: str) -> dict[str, Any]:
        message = Message("dt/x", b"{}", client_id, "", 0)
        return forward.prepare({"region": region}, Matched("r", message, b"{}", None))

    with pytest.raises(WrongRegion) as refused:
        prepare("de-1", A)
    assert refused.value.message == ("device 'de-1' may keep its data only in eu-central-1, eu-west-1 (its "
                                     "residency scope): its messages are not forwarded to us-east-1")
    assert refused.value.regions == ["eu-central-1", "eu-west-1"]
    assert prepare("free-1", A)["clientId"] == "free-1"  # no rule: everywhere
    assert prepare("unknown", A)["clientId"] == "unknown"  # not a thing: everywhere, as before
    registry.things.update("de-1", attributes={REGIONS_ATTRIBUTE: "eu-west-1,us-east-1"})
    assert prepare("de-1", A)["clientId"] == "de-1"


def test_a_row_purged_while_it_was_being_delivered_is_not_brought_back_as_a_dead_letter() -> None:
    store = RulesStore(":memory:")
    row_id = store.enqueue("http", {"clientId": "de-1"}, 0, "de-1")
    row = store.batch("http", 1, 1 << 20)[0]
    assert store.purge_device("de-1") == 1  # while a sender awaited the webhook
    assert store.dead_letter("http", row, "r", {"http": {"url": "u"}}, "gave up", 1) is False
    assert store.dead_letters() == []
    assert store.depth() == {}
    assert row.id == row_id


@pytest.fixture
def engine(tmp_path: Path, residency: tuple[Registry, Residency]) -> tuple[Registry, RulesEngine, RulesStore]:
    """eu-west-1's rules engine over a real store and registry; its broker is built, never started
    (the rules below only queue durable actions)."""
    registry, scopes = residency
    files = _write_pki(tmp_path)
    broker = EmbeddedBroker("127.0.0.1", 1, files["server"], files["server_key"], files["ca"])
    rules_store = RulesStore(":memory:")
    engine = RulesEngine(registry.ledger, rules_store, broker, builtin_kinds(frozenset(REGIONS), scopes), B, scopes)
    admin = RuleAdmin(registry.ledger, FleetContext(frozenset(REGIONS), B))
    admin.create("to_us", {"sql": "SELECT * FROM 'dt/+/t'", "actions": [{"forward": {"region": A}}],
                           "errorAction": {"http": {"url": "https://errors.example/hook"}}})
    return registry, engine, rules_store


def _http_rows(store: RulesStore) -> list[dict[str, Any]]:
    return [json.loads(base64.b64decode(row.body["payload"])) for row in store.batch("http", 100, 1 << 20)]


def test_the_error_action_gets_aws_payload_naming_the_scope(engine: tuple[Registry, RulesEngine, RulesStore]) -> None:
    registry, rules, store = engine
    registry.things.create(ThingName("de-1"), attributes={REGIONS_ATTRIBUTE: "eu-west-1"})
    asyncio.run(rules.process(Message("dt/de-1/t", b'{"x":1}', "de-1", "", 5)))
    assert store.batch(f"forward:{A}", 10, 1 << 20) == []
    assert _http_rows(store) == [{
        "ruleName": "to_us", "topic": "dt/de-1/t", "clientId": "de-1", "base64OriginalPayload": "eyJ4IjoxfQ==",
        "failures": [{"failedAction": "ForwardAction", "failedResource": A, "errorMessage": (
            "device 'de-1' may keep its data only in eu-west-1 (its residency scope): its messages are not "
            "forwarded to us-east-1")}]}]
    assert [row.device for row in store.batch("http", 10, 1 << 20)] == ["de-1"]  # purged with its device
    assert rules.counters["actionsFailed"] == 1


def test_the_rules_do_not_act_on_a_message_of_a_device_whose_data_may_not_rest_here(
        engine: tuple[Registry, RulesEngine, RulesStore]) -> None:
    registry, rules, store = engine
    registry.things.create(ThingName("us-1"), attributes={REGIONS_ATTRIBUTE: "us-east-1"})
    registry.things.create(ThingName("free-1"))
    asyncio.run(rules.process(Message("dt/us-1/t", b"{}", "us-1", "", 5)))  # a Last Will as eu-west-1 left its scope
    assert (store.depth(), rules.counters["outOfScope"], rules.counters["matched"]) == ({}, 1, 0)
    asyncio.run(rules.process(Message("dt/free-1/t", b"{}", "free-1", "", 5)))
    assert [row.device for row in store.batch(f"forward:{A}", 10, 1 << 20)] == ["free-1"]


# -- end to end: three regions, a device scoped to eu-west-1 -----------------------------------


@pytest.fixture(scope="module")
def rfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet of its own (webhooks give up after 3 quick attempts), with the observer policy."""
    with observed_fleet(tmp_path_factory.mktemp("residency-rules") / "fleet", HTTP_ENV) as fleet:
        yield fleet


def scope(fleet: Fleet, region: str, name: str, regions: str) -> None:
    """Set the device's permitted regions (its residency scope), as provisioning records them."""
    with fleet.admin(region) as api:
        api.call("PATCH", f"/things/{name}", json={"attributes": {REGIONS_ATTRIBUTE: regions}})


def scoped_device(fleet: Fleet, region: str, regions: str) -> str:
    name = fleet.create_device(fleet.new_name("de"), region)
    scope(fleet, region, name, regions)
    return name


def wait_scope_known(fleet: Fleet, region: str, name: str, regions: str) -> None:
    """Until ``region`` knows the device's scope (its full thing or its stub carries it)."""
    def known() -> bool:
        with fleet.admin(region) as api:
            try:
                thing = api.call("GET", f"/things/{name}")
            except GeofleetError as error:
                return error.status == WrongRegion.status  # "ask eu-west-1": it knows the scope
            return bool(thing["attributes"].get(REGIONS_ATTRIBUTE) == regions)

    wait_for(known, 15, f"{region} knowing that {name} keeps its data in {regions}")


def dead_letters(fleet: Fleet, region: str, rule: str) -> list[dict[str, Any]]:
    with fleet.admin(region) as api:
        return [d for d in api.call("GET", "/rules-outbox/dead-letters", params={"limit": 1000})["deadLetters"]
                if d["ruleName"] == rule]


def forward_state(fleet: Fleet, region: str, target: str, state: str) -> dict[str, Any]:
    with fleet.admin(region) as api:
        return dict(api.call("POST", f"/rules-outbox/forward/{target}/{state}"))


def queued(fleet: Fleet, region: str, channel: str) -> int:
    return int(outbox(fleet, region)["outbox"].get(channel, {}).get("messages", 0))


def journaled(fleet: Fleet, region: str, consumer: str) -> list[str]:
    """The client ids of the journal entries ``consumer`` reads in ``region``."""
    with fleet.admin(region) as api:
        page = api.call("GET", f"/v1/consumers/{consumer}/messages", params={"after": 0, "wait": 0})
    return [m["clientId"] for m in page["messages"]]


def refused_url() -> str:
    """A webhook nobody listens on (the port was free a moment ago): every attempt is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_a_forward_outside_the_publishers_scope_runs_the_error_action_and_an_unscoped_one_goes(
        rfleet: Fleet) -> None:
    de = scoped_device(rfleet, B, "eu-west-1")  # a DE -> eu-west-1 rule recorded it so
    free = rfleet.create_device(rfleet.new_name("free"), B)
    with observer(rfleet, A, "fwd/#") as us, observer(rfleet, B, "errors/#") as eu, \
            rfleet.device(de, B).connect() as de_device, rfleet.device(free, B).connect() as free_device:
        create_rule(rfleet, B, "res_forward", "SELECT *, clientid() AS cid FROM 'dt/+/res'",
                    {"forward": {"region": A, "topic": "fwd/${topic(2)}"}},
                    errorAction={"republish": {"topic": "errors/${topic(2)}"}})
        de_device.publish(f"dt/{de}/res", {"temp": 21})
        free_device.publish(f"dt/{free}/res", {"temp": 22})

        error = wait_for(lambda: payloads(eu, f"errors/{de}"), 10, "the errorAction of the refused forward")[0]
        assert error == {
            "ruleName": "res_forward", "topic": f"dt/{de}/res", "clientId": de,
            "base64OriginalPayload": base64.b64encode(json.dumps({"temp": 21}).encode()).decode(),
            "failures": [{"failedAction": "ForwardAction", "failedResource": A,
                          "errorMessage": f"device {de!r} may keep its data only in eu-west-1 (its residency "
                                          "scope): its messages are not forwarded to us-east-1"}]}
        # the unscoped device's message, published after, goes through the same channel: once it
        # is in us-east-1, the scoped one would have been there before it
        assert wait_for(lambda: payloads(us, f"fwd/{free}"), 15, "the unscoped device's forward") == [
            {"temp": 22, "cid": free}]
        assert payloads(us, f"fwd/{de}") == []
        assert payloads(eu, f"errors/{free}") == []
        wait_for(lambda: not queued(rfleet, B, f"forward:{A}"), 10, "eu-west-1's outbox emptied")
        assert dead_letters(rfleet, B, "res_forward") == []  # refused before it was queued


def test_a_forward_queued_before_the_scope_narrowed_is_dead_lettered_not_sent(rfleet: Fleet) -> None:
    mover = scoped_device(rfleet, B, "eu-west-1,us-east-1")
    with observer(rfleet, A, "moved/#") as us, rfleet.device(mover, B).connect() as device:
        create_rule(rfleet, B, "res_queued", f"SELECT * FROM 'dt/{mover}/mv'",
                    {"forward": {"region": A, "topic": "moved/${topic(2)}"}})
        forward_state(rfleet, B, A, "pause")
        try:
            device.publish(f"dt/{mover}/mv", {"seq": 1})  # in scope now: queued
            wait_for(lambda: queued(rfleet, B, f"forward:{A}") == 1, 10, "the forward queued in eu-west-1")
            scope(rfleet, B, mover, "eu-west-1")  # no longer us-east-1
        finally:
            forward_state(rfleet, B, A, "resume")
        dead = wait_for(lambda: dead_letters(rfleet, B, "res_queued"), 15, "the queued forward dead-lettered")
        assert len(dead) == 1
        assert dead[0]["action"] == {"forward": {"region": A}}
        assert dead[0]["message"]["clientId"] == mover
        assert dead[0]["errorMessage"] == (f"device {mover!r} may keep its data only in eu-west-1 (its residency "
                                           "scope): its messages are not forwarded to us-east-1")
        assert queued(rfleet, B, f"forward:{A}") == 0
        status = next(f for f in outbox(rfleet, B)["forwards"] if f["target"] == A)
        assert status["outOfScope"] >= 1
        assert payloads(us, f"moved/{mover}") == []


def test_a_region_refuses_a_forwarded_message_about_a_device_whose_scope_leaves_it_out(rfleet: Fleet) -> None:
    de = scoped_device(rfleet, B, "eu-west-1")
    free = rfleet.create_device(rfleet.new_name("free"), B)
    wait_scope_known(rfleet, A, de, "eu-west-1")
    with observer(rfleet, A, "spoofed/#") as us, peer_http(rfleet, A, as_region=B) as peer:
        def item(seq: int, device: str) -> dict[str, Any]:
            return {"seq": seq, "topic": f"spoofed/{device}", "qos": 0, "clientId": device, "principal": "",
                    "timestamp": 0, "payload": base64.b64encode(b'{"n":1}').decode()}

        answer = peer.post("/v1/forward", params={"peer": B},
                           json={"epoch": rfleet.new_name("epoch"), "items": [item(1, de), item(2, free)]})
        assert answer.status_code == 200
        assert answer.json() == {"region": A, "through": 2, "refused": [{"seq": 1, "errorMessage": (
            f"device {de!r} may keep its data only in eu-west-1 (its residency scope): us-east-1 does not take its "
            "forwarded messages")}]}
        assert wait_for(lambda: payloads(us, f"spoofed/{free}"), 10, "the unscoped device's message") == [{"n": 1}]
        assert payloads(us, f"spoofed/{de}") == []  # published in order: it would have come first


def test_a_region_leaving_a_devices_scope_deletes_its_journal_rows_outbox_rows_and_dead_letters(
        rfleet: Fleet) -> None:
    leaver = scoped_device(rfleet, A, "eu-west-1,us-east-1")
    stayer = rfleet.create_device(rfleet.new_name("stayer"), A)
    wait_scope_known(rfleet, B, leaver, "eu-west-1,us-east-1")
    consumer = rfleet.new_name("res-journal")
    with rfleet.admin(A) as api:
        api.call("PUT", f"/v1/consumers/{consumer}", json={"filters": ["dt/+/lv"]})
    create_rule(rfleet, A, "res_dead", "SELECT * FROM 'dt/+/lv'", {"http": {"url": refused_url()}})
    create_rule(rfleet, A, "res_waiting", "SELECT * FROM 'dt/+/lv'",
                {"forward": {"region": B, "topic": "lv-fwd/${topic(2)}"}})
    with observer(rfleet, B, "lv-fwd/#") as eu:
        forward_state(rfleet, A, B, "pause")
        try:
            with rfleet.device(leaver, A).connect() as gone, rfleet.device(stayer, A).connect() as kept:
                gone.publish(f"dt/{leaver}/lv", {"who": "leaver"})
                kept.publish(f"dt/{stayer}/lv", {"who": "stayer"})
                wait_for(lambda: len(dead_letters(rfleet, A, "res_dead")) == 2, 15, "both webhooks dead-lettered")
                assert sorted(journaled(rfleet, A, consumer)) == sorted([leaver, stayer])
                assert queued(rfleet, A, f"forward:{B}") == 2

                scope(rfleet, B, leaver, "eu-west-1")  # in eu-west-1, which stays in the scope

                wait_for(lambda: journaled(rfleet, A, consumer) == [stayer], 15, "the leaver's journal rows gone")
                assert [d["message"]["clientId"] for d in dead_letters(rfleet, A, "res_dead")] == [stayer]
                assert queued(rfleet, A, f"forward:{B}") == 1
                wait_for(lambda: gone.disconnects, 10, "the leaver's session in us-east-1 closed")
        finally:
            forward_state(rfleet, A, B, "resume")
        assert wait_for(lambda: payloads(eu, f"lv-fwd/{stayer}"), 15, "the stayer's forward") == [{"who": "stayer"}]
        wait_for(lambda: not queued(rfleet, A, f"forward:{B}"), 10, "us-east-1's outbox emptied")
        assert payloads(eu, f"lv-fwd/{leaver}") == []
