"""``geofleet residency audit``: real SQLite files written by the real store, ledger, thing and
shadow services and replicated in process (``tests/residency_stack.py``). A clean fleet passes;
an item planted behind the services' back, of each kind the audit knows, is reported."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geofleet.config import DataDir
from geofleet.domain.hlc import HLC
from geofleet.domain.presence import entry_key
from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import Scope, holds_more_than_stub
from geofleet.domain.shadow import Shadow
from geofleet.residency_audit import AuditReport, audit, audit_data_dir, device_scopes
from geofleet.store.rules_sqlite import RulesStore
from tests.helpers import examples, geofleet
from tests.residency_stack import Stack, anti_entropy, pull

EU, US, AP = "eu-west-1", "us-east-1", "ap-southeast-1"
REGIONS = (US, EU, AP)


def converge(stacks: dict[str, Stack]) -> None:
    async def rounds() -> None:
        for _ in range(2):
            for source in stacks.values():
                for target in stacks.values():
                    if source is not target:
                        while not await pull(source, target):
                            pass
                        await anti_entropy(source, target)
    asyncio.run(rounds())


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Stack]]]:
    """A three-region data directory: de-1 scoped to eu-west-1 (shadow, presence, personal
    attribute there), every-1 scoped everywhere, both replicated to every region."""
    root = tmp_path / "fleet"
    regions = [{"name": name, "host": "127.0.0.1", "mqtt_port": 20000 + i, "http_port": 21000 + i,
                "peer_port": 22000 + i} for i, name in enumerate(REGIONS)]
    root.mkdir()
    (root / "fleet.json").write_text(json.dumps({"fleet": "acme", "regions": regions}))
    stacks = {name: Stack(root / "regions", name) for name in REGIONS}
    RulesStore(root / "regions" / EU / "rules.db").close()
    eu = stacks[EU]
    eu.create("de-1", Scope.of([EU]), "Erika_Mustermann")
    eu.create("every-1", Scope.everywhere(), "John_Doe")
    asyncio.run(eu.write("de-1", 1))
    asyncio.run(stacks[US].write("every-1", 2))
    eu.ledger.put(Kind.PRESENCE, entry_key("de-1", EU), {"session": "s1"}, ref="de-1")
    eu.journal.append("dt/de-1/telemetry", "de-1", 0, b"{}")
    converge(stacks)
    yield root, stacks
    for stack in stacks.values():
        stack.close()


def report_of(root: Path) -> AuditReport:
    return audit_data_dir(DataDir(root))


def test_a_replicated_fleet_with_a_scoped_device_is_clean(fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    root, stacks = fleet_dir
    assert stacks[US].shadow_state("de-1") is None
    assert stacks[US].shadow_state("every-1") is not None
    assert stacks[US].thing_body("de-1")["attributes"] == {"geofleet:regions": EU}  # the stub
    assert stacks[EU].thing_body("de-1")["attributes"]["owner"] == "Erika_Mustermann"
    report = report_of(root)
    assert report.clean, report.text()
    assert report.checked > 10
    assert report.text().endswith(f"no item is stored outside its device's residency scope ({report.checked} items "
                                  "checked in 3 regions)")


def _later() -> HLC:
    return HLC(int(time.time() * 1000) + 60_000)


def plant_shadow(stacks: dict[str, Stack]) -> None:
    stacks[US].store.put_shadow("de-1", "", Shadow({"reported": {"v": 9}}), _later(), US)


def plant_named_shadow_log(stacks: dict[str, Stack]) -> None:
    stacks[AP].store.put_shadow("de-1", "gps", Shadow({"reported": {"lat": 1}}), _later(), AP,
                                ops={'["reported","lat"]': [_later().encode(), "1", False]})


def plant_presence(stacks: dict[str, Stack]) -> None:
    stacks[US].store.put(Record(Kind.PRESENCE, entry_key("de-1", US), {"session": "s2"}, _later(), US, "de-1"),
                         log=False)


def plant_presence_log(stacks: dict[str, Stack]) -> None:
    stacks[US].store.put(Record(Kind.PRESENCE, entry_key("de-1", US), None, _later(), US, "de-1"))


def plant_parked_presence(stacks: dict[str, Stack]) -> None:
    record = Record(Kind.PRESENCE, entry_key("de-1", AP), {"session": "s3"}, _later(), AP, "de-1")
    stacks[AP].store.park(record, [(Kind.THING, "de-1")])


def _full_thing(stacks: dict[str, Stack]) -> Record:
    record = stacks[EU].store.get(Kind.THING, "de-1")
    assert record is not None
    return record


def plant_thing(stacks: dict[str, Stack]) -> None:
    stacks[US].store.put(_full_thing(stacks), log=False)


def plant_thing_log(stacks: dict[str, Stack]) -> None:
    full = _full_thing(stacks)
    stub = stacks[AP].store.get(Kind.THING, "de-1")
    assert stub is not None
    stacks[AP].store.put(stub, logged=full)


def plant_journal(stacks: dict[str, Stack]) -> None:
    stacks[US].journal.append("dt/de-1/telemetry", "de-1", 0, b'{"temp": 21}')


def _rules_with_device(stacks: dict[str, Stack], region: str) -> Path:
    """A rules.db whose tables name the device a row is about (the column residency adds)."""
    path = stacks[region].root / "rules.db"
    RulesStore(path).close()  # the rules store names each row's device (migrated on open)
    return path


def plant_outbox(stacks: dict[str, Stack]) -> None:
    with sqlite3.connect(_rules_with_device(stacks, US)) as db:
        db.execute("INSERT INTO rule_outbox (channel, body, bytes, due_ms, created_ms, device) "
                   "VALUES ('forward:eu-west-1', '{}', 2, 0, 0, 'de-1')")


def plant_dead_letter(stacks: dict[str, Stack]) -> None:
    with sqlite3.connect(_rules_with_device(stacks, AP)) as db:
        db.execute("INSERT INTO rule_dead_letters (rule, action, body, error, attempts, failed_ms, device) "
                   "VALUES ('r', '{}', '{}', 'timeout', 3, 0, 'de-1')")


PLANTED: dict[str, tuple[Callable[[dict[str, Stack]], None], str]] = {
    "shadow": (plant_shadow, US),
    "changelog shadow": (plant_named_shadow_log, AP),
    "presence": (plant_presence, US),
    "changelog presence": (plant_presence_log, US),
    "parked presence": (plant_parked_presence, AP),
    "thing": (plant_thing, US),
    "changelog thing": (plant_thing_log, AP),
    "journal": (plant_journal, US),
    "rules outbox": (plant_outbox, US),
    "dead letter": (plant_dead_letter, AP),
}


@pytest.mark.parametrize("what", sorted(PLANTED))
def test_a_planted_item_of_each_kind_is_reported(what: str, fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    root, stacks = fleet_dir
    plant, region = PLANTED[what]
    plant(stacks)
    report = report_of(root)
    assert not report.clean
    assert {(v.region, v.what, v.device, v.scope) for v in report.violations if v.what == what} == \
        {(region, what, "de-1", EU)}, report.text()
    assert all(v.device == "de-1" and v.region != EU for v in report.violations), report.text()
    assert what in report.text()
    assert "outside their device's residency scope" in report.text()


def test_the_newest_thing_anywhere_decides_the_scope(fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    """us-east-1 has not heard yet that every-1 moved to eu-west-1: its shadow there is a
    violation (the audit judges by the fleet's decision, not by the region's stale copy)."""
    root, stacks = fleet_dir
    stacks[EU].rescope("every-1", Scope.of([EU]), "John_Doe")
    report = report_of(root)
    assert {(v.region, v.what, v.device) for v in report.violations if v.what == "shadow"} == \
        {(US, "shadow", "every-1"), (AP, "shadow", "every-1")}
    converge(stacks)  # the move reaches them: they purge
    assert report_of(root).clean, report_of(root).text()


def test_a_deleted_thing_keeps_its_last_scope(fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    root, stacks = fleet_dir
    stacks[EU].things.delete("de-1")
    converge(stacks)
    assert device_scopes({name: stack.root / "store.db" for name, stack in stacks.items()}) == {"de-1": EU}
    plant_shadow(stacks)
    assert [v.what for v in report_of(root).violations] == ["shadow"]


def test_fleet_global_attributes_are_not_personal() -> None:
    body = {"thingName": "t", "version": 3, "attributes": {"geofleet:regions": EU, "site": "dublin"}}
    assert holds_more_than_stub(body)
    assert not holds_more_than_stub(body, ["site"])
    assert holds_more_than_stub({**body, "extra": 1}, ["site"])
    assert not holds_more_than_stub(None)


def test_the_audit_never_writes_what_it_reads(fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    root, stacks = fleet_dir
    store = stacks[US].root / "store.db"
    for stack in stacks.values():
        stack.close()
    before = {path: path.read_bytes() for path in root.rglob("*.db")}
    assert store in before
    report_of(root)
    assert {path: path.read_bytes() for path in root.rglob("*.db")} == before


def test_a_region_without_a_store_is_a_clear_error(tmp_path: Path) -> None:
    regions = [{"name": name, "host": "127.0.0.1", "mqtt_port": 20000 + i, "http_port": 21000 + i,
                "peer_port": 22000 + i} for i, name in enumerate(REGIONS)]
    (tmp_path / "fleet.json").write_text(json.dumps({"fleet": "acme", "regions": regions}))
    with pytest.raises(Exception, match="no store for region"):
        report_of(tmp_path)


def test_ten_thousand_devices_audit_in_seconds(tmp_path: Path) -> None:
    """Scale: 10k scoped devices with a shadow each, replicated to three regions (a tenth under
    ``make test-unit``: writing them takes ten times longer than auditing them, 0.35 s for 10k)."""
    count = examples(10_000)
    stacks = {name: Stack(tmp_path, name) for name in REGIONS}
    try:
        eu = stacks[EU]
        with eu.store.atomic():
            for i in range(count):
                eu.create(f"d{i}", Scope.of([EU] if i % 2 else [EU, US]), "x")
        asyncio.run(_many_writes(eu, count))
        converge(stacks)
        started = time.monotonic()
        report = audit({name: stack.files for name, stack in stacks.items()})
        took = time.monotonic() - started
        assert report.clean, report.text()[:2000]
        assert report.checked > 4 * count
        assert took < 10, took
    finally:
        for stack in stacks.values():
            stack.close()


async def _many_writes(stack: Stack, count: int) -> None:
    with stack.store.atomic():
        for i in range(count):
            await stack.write(f"d{i}", i)


@pytest.mark.e2e
def test_the_cli_prints_none_or_a_table_and_exits_accordingly(fleet_dir: tuple[Path, dict[str, Stack]]) -> None:
    root, stacks = fleet_dir
    clean = geofleet("residency", "audit", "--data-dir", str(root))
    assert "no item is stored outside its device's residency scope" in clean.stdout
    plant_shadow(stacks)
    dirty = geofleet("residency", "audit", "--data-dir", str(root), check=False)
    assert dirty.returncode == 1
    assert "Traceback" not in dirty.stderr
    assert "us-east-1" in dirty.stdout
    assert "de-1" in dirty.stdout
    as_json = json.loads(geofleet("residency", "audit", "--data-dir", str(root), "--json", check=False).stdout)
    assert as_json["violations"] == [{"region": US, "what": "shadow", "device": "de-1", "item": "", "scope": EU}]
    missing = geofleet("residency", "audit", "--data-dir", str(root / "nowhere"), check=False)
    assert missing.returncode == 2
    assert "no fleet in" in missing.stderr
