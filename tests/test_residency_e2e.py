"""Data residency end to end on a real three-region fleet where a residency rule keeps German
devices in eu-west-1: a German device's shadow, attributes and presence are stored only there,
through a partition and its heal, a move of its scope, and a SIGKILL; its revocation still
reaches every region; an application that asks us-east-1 is sent to eu-west-1.

The evidence is read from the regions' own SQLite files (read-only), not from their APIs, and
`geofleet residency audit` must agree.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geofleet.client import AdminClient
from geofleet.domain.errors import GeofleetError
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import REGIONS, Fleet
from tests.helpers import Device, geofleet, wait_for
from tests.test_provisioning import _has_group as has_group
from tests.test_provisioning import post, request_body

EU, US, AP = "eu-west-1", "us-east-1", "ap-southeast-1"
BERLIN, LONDON = "85.214.132.117", "81.2.69.142"
PROXY = "127.0.0.2"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def rfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    fleet = Fleet.start(tmp_path_factory.mktemp("residency") / "fleet", tuple(REGIONS),
                        settings={"trusted_proxies": [f"{PROXY}/32"], "residency": {"DE": [EU]}})
    assert isinstance(fleet, Fleet)
    fleet.wait_healthy()
    with AdminClient(fleet.data, US) as api:
        key = api.call("POST", "/enrollment-groups/factory", json={"attributes": {"batch": "b1"}})["key"]
    wait_for(lambda: all(_has_group(fleet, r) for r in REGIONS), 10, "the enrollment group in every region")
    yield fleet, key
    fleet.stop()


def _has_group(fleet: Fleet, region: str) -> bool:
    return has_group(fleet, region, "factory")


def provision(fleet: Fleet, group_key: str, address: str, prefix: str, folder: Path, via: str = US
              ) -> tuple[str, dict[str, Any]]:
    """Provision a device that connects from ``address``, through region ``via``; its key and
    certificate go to ``folder``."""
    name = fleet.new_name(prefix)
    key = new_key()
    answer = post(fleet, via, request_body(name, group_key, make_csr(key, name).decode()), address)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    (folder / f"{name}.cert.pem").write_text(body["certificatePem"])
    (folder / f"{name}.key.pem").write_bytes(key_pem(key))
    (folder / "ca.pem").write_text(body["caChain"][-1])
    return name, body


def device(fleet: Fleet, name: str, region: str, folder: Path) -> Device:
    return Device(name, fleet.port(region), folder / "ca.pem", folder / f"{name}.cert.pem",
                  folder / f"{name}.key.pem")


def stored(fleet: Fleet, region: str, name: str) -> dict[str, Any]:
    """What region's store file holds of a device, read straight from SQLite (read-only)."""
    db = sqlite3.connect(f"file:{fleet.data.region(region).store}?mode=ro", uri=True)
    try:
        shadows = db.execute("SELECT count(*) FROM shadows WHERE thing = ?", (name,)).fetchone()[0]
        presence = db.execute("SELECT count(*) FROM records WHERE kind = 'presence' AND ref = ?",
                              (name,)).fetchone()[0]
        thing = db.execute("SELECT body FROM records WHERE kind = 'thing' AND key = ?", (name,)).fetchone()
        logged = db.execute("SELECT count(*) FROM changelog WHERE (kind = 'shadow' AND key LIKE ?) OR "
                            "(kind = 'presence' AND ref = ?)", (f"{name}|%", name)).fetchone()[0]
    finally:
        db.close()
    body = json.loads(thing[0]) if thing and thing[0] else None
    return {"shadows": shadows, "presence": presence, "logged": logged,
            "attributes": (body or {}).get("attributes"), "thing": body is not None}


def audit_is_clean(fleet: Fleet) -> None:
    result = geofleet("residency", "audit", "--data-dir", str(fleet.data.root), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def shadow_state(fleet: Fleet, region: str, name: str) -> Any:
    with AdminClient(fleet.data, region) as api:
        try:
            return api.call("GET", f"/things/{name}/shadow")["state"]
        except GeofleetError:
            return None


def test_a_german_device_keeps_shadow_attributes_and_presence_in_eu_west_1(
        rfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    fleet, key = rfleet
    german, answer = provision(fleet, key, BERLIN, "de", tmp_path)
    assert [e["region"] for e in answer["endpoints"]] == [EU], "the DE rule permits eu-west-1 only"
    british, _ = provision(fleet, key, LONDON, "gb", tmp_path)
    with AdminClient(fleet.data, EU) as api:
        wait_for(lambda: api.call("GET", f"/things/{german}") is not None, 10, "the thing in eu-west-1")
        api.call("PATCH", f"/things/{german}", json={"attributes": {"owner": "Erika_Mustermann"}})
    with device(fleet, german, EU, tmp_path).connect() as de, device(fleet, british, EU, tmp_path).connect() as gb:
        de.subscribe(f"$aws/things/{german}/shadow/update/+")
        gb.subscribe(f"$aws/things/{british}/shadow/update/+")
        de.request(f"$aws/things/{german}/shadow/update", {"state": {"reported": {"temp": 21}}})
        gb.request(f"$aws/things/{british}/shadow/update", {"state": {"reported": {"temp": 17}}})
        wait_for(lambda: all(stored(fleet, r, british)["shadows"] for r in REGIONS), 10,
                 "the British device's shadow everywhere (no rule: today's behaviour)")
        wait_for(lambda: all(stored(fleet, r, german)["thing"] for r in REGIONS), 10, "the German thing's stub")
        home = stored(fleet, EU, german)
        assert (home["shadows"], home["presence"], home["attributes"]["owner"]) == (1, 1, "Erika_Mustermann")
        for region in (US, AP):
            there = stored(fleet, region, german)
            assert (there["shadows"], there["presence"], there["logged"]) == (0, 0, 0), region
            assert set(there["attributes"]) == {"geofleet:homeRegion", "geofleet:regions"}, region
        assert stored(fleet, US, british)["presence"] == 1, "presence of unscoped devices is everywhere"
    audit_is_clean(fleet)


def test_a_revocation_in_us_east_1_is_refused_in_every_region(rfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    fleet, key = rfleet
    german, _ = provision(fleet, key, BERLIN, "de", tmp_path)
    with device(fleet, german, EU, tmp_path).connect() as de:
        cert = fleet.cert_id(german, US)
        started = time.monotonic()
        geofleet("cert", "revoke", cert, "--data-dir", str(fleet.data.root), "--region", US)
        wait_for(lambda: not de.client.is_connected(), 5, "the session in eu-west-1 cut")
        print(f"revoked in {US}, session in {EU} cut after {time.monotonic() - started:.3f} s")
    for region in REGIONS:
        assert not device(fleet, german, region, tmp_path).try_connect(), f"{region} refuses the revoked certificate"


def test_partition_heal_and_scope_moves_leave_no_item_outside_the_scope(
        rfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    fleet, key = rfleet
    german, _ = provision(fleet, key, BERLIN, "de", tmp_path)
    with AdminClient(fleet.data, EU) as eu:
        wait_for(lambda: eu.call("GET", f"/things/{german}"), 10, "the thing in eu-west-1")
        for region in (US, AP):
            eu.call("POST", "/replication/pause", params={"peer": region})
        try:
            for i in range(20):
                eu.call("POST", f"/things/{german}/shadow", json={"state": {"reported": {"n": i}}})
        finally:
            for region in (US, AP):
                eu.call("POST", "/replication/resume", params={"peer": region})
        eu.call("POST", "/replication/sync")
    audit_is_clean(fleet)
    assert stored(fleet, US, german)["shadows"] == 0

    widened = geofleet("device", "move", german, "--to", EU, "--regions", f"{EU},{US}",
                       "--data-dir", str(fleet.data.root), "--region", EU, "--json")
    assert json.loads(widened.stdout)["homeRegion"] == EU
    wait_for(lambda: shadow_state(fleet, US, german) == {"reported": {"n": 19}}, 10,
             "the shadow copied into us-east-1, which entered the scope")
    assert stored(fleet, AP, german)["shadows"] == 0
    audit_is_clean(fleet)

    geofleet("device", "move", german, "--to", EU, "--regions", EU, "--data-dir", str(fleet.data.root),
             "--region", EU)
    wait_for(lambda: stored(fleet, US, german)["shadows"] == 0, 10, "us-east-1 deleted it on leaving the scope")
    audit_is_clean(fleet)


def test_a_region_killed_while_the_scope_left_it_deletes_the_data_when_it_returns(
        rfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    """Last in the module: it SIGKILLs us-east-1 (restarted by hand)."""
    fleet, key = rfleet
    german, _ = provision(fleet, key, BERLIN, "de", tmp_path, via=EU)
    root = str(fleet.data.root)
    geofleet("device", "move", german, "--to", EU, "--regions", f"{EU},{US}", "--data-dir", root, "--region", EU)
    with AdminClient(fleet.data, EU) as eu:
        eu.call("POST", f"/things/{german}/shadow", json={"state": {"reported": {"secret": 1}}})
    wait_for(lambda: stored(fleet, US, german)["shadows"] == 1, 10, "the shadow in us-east-1 while in scope")
    fleet.send_signal(US, signal.SIGKILL)
    geofleet("device", "move", german, "--to", EU, "--regions", EU, "--data-dir", root, "--region", EU)
    assert stored(fleet, US, german)["shadows"] == 1, "us-east-1 is down: it still holds the copy"
    fleet.restart(US)
    wait_for(lambda: stored(fleet, US, german)["shadows"] == 0, 15, "us-east-1 deletes it once it learns")
    audit_is_clean(fleet)
