"""Replication hardening on real fleets: a link that keeps failing is visible (growing backlog,
degraded health, in the CLI too), and each region's change log is truncated once its peers have
pulled it, a peer that was away past the truncation catching up by anti-entropy, deletes included."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geofleet.domain.errors import NotFound
from geofleet.domain.hlc import HLC
from tests.conftest import Fleet
from tests.helpers import geofleet, wait_for

A, B = "us-east-1", "eu-west-1"


def _fleet(root: Path, **settings: object) -> Iterator[Fleet]:
    fleet = Fleet.start(root, (A, B), settings=settings)
    assert isinstance(fleet, Fleet)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Fleet]:
    """Two regions whose logs are kept until pulled (the retention is far away)."""
    yield from _fleet(tmp_path / "fleet", changelog_retention_s=3600)


@pytest.fixture
def short_memory(tmp_path: Path) -> Iterator[Fleet]:
    """Two regions that keep an unpulled change for 2 s only."""
    yield from _fleet(tmp_path / "fleet", changelog_retention_s=2)


def status(fleet: Fleet, region: str) -> dict[str, Any]:
    with fleet.admin(region) as api:
        return dict(api.call("GET", "/replication/status"))


def health(fleet: Fleet, region: str) -> dict[str, Any]:
    with fleet.admin(region) as api:
        return dict(api.call("GET", "/health"))


def exists(fleet: Fleet, region: str, path: str) -> bool:
    with fleet.admin(region) as api:
        try:
            api.call("GET", path)
        except NotFound:
            return False
    return True


def has_thing(fleet: Fleet, region: str, name: str) -> bool:
    return exists(fleet, region, f"/things/{name}")


def has_shadow(fleet: Fleet, region: str, thing: str) -> bool:
    return exists(fleet, region, f"/things/{thing}/shadow")


def create_things(fleet: Fleet, region: str, names: list[str]) -> None:
    with fleet.admin(region) as api:
        for name in names:
            api.call("POST", f"/things/{name}", json={})


def log_rows(fleet: Fleet, region: str) -> int:
    """Counted in the region's real SQLite file, read-only, while the region runs."""
    path = fleet.data.region(region).store
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM changelog").fetchone()[0])


# -- item 3: a link that keeps failing ----------------------------------------------------------

def test_a_link_the_peer_cannot_serve_shows_a_growing_backlog_and_degraded_health(pair: Fleet) -> None:
    create_things(pair, A, ["before"])
    wait_for(lambda: has_thing(pair, B, "before"), 10, "the first thing in B")
    wait_for(lambda: health(pair, B)["status"] == "ok", 15, "B healthy")
    # A change that A's own store cannot read back: A answers B's pulls with HTTP 500, forever.
    store = pair.data.region(A).store
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO changelog (hlc, origin, kind, key, ref, body) VALUES (?, ?, 'thing', 'broken', '', ?)",
                   (HLC(int(time.time() * 1000)).encode(), A, '{"thingName": '))
    create_things(pair, A, ["after-0"])  # wakes B's long poll
    wait_for(lambda: "HTTP 500" in (status(pair, B)["links"][A]["lastError"] or ""), 20, "B's link to fail")
    first = status(pair, B)["links"][A]["backlog"]
    assert first >= 2
    create_things(pair, A, [f"after-{i}" for i in range(1, 6)])
    wait_for(lambda: status(pair, B)["links"][A]["backlog"] >= first + 5, 20, "the backlog to grow")

    # Degraded, and stays so while the priority stream keeps succeeding (it answers every long poll).
    contacts: set[int] = set()

    def degraded_through_two_priority_answers() -> bool:
        report, link = health(pair, B), status(pair, B)["links"][A]
        assert report["status"] == "degraded", report
        assert report["healthy"], report
        assert "HTTP 500" in report["replication"][A]["failing"], (report, link)
        assert link["lastError"], (report, link)
        contacts.add(link["lastContactMs"])
        return len(contacts) >= 3
    wait_for(degraded_through_two_priority_answers, 40, "two priority answers while degraded")

    rows = json.loads(geofleet("replication", "status", "--data-dir", str(pair.data.root), "--json").stdout)
    row = next(r for r in rows if r["source"] == A and r["target"] == B)
    assert row["backlog"] >= first + 5
    assert "HTTP 500" in row["lastError"]
    table = geofleet("replication", "status", "--data-dir", str(pair.data.root)).stdout
    assert any(line.startswith(f"{A:16} {B:16}") and "HTTP 500" in line for line in table.splitlines())

    with sqlite3.connect(store) as db:  # the operator removes the bad change: the link recovers
        db.execute("DELETE FROM changelog WHERE key = 'broken'")
    wait_for(lambda: has_thing(pair, B, "after-5"), 20, "B to catch up")
    wait_for(lambda: health(pair, B)["status"] == "ok", 20, "B healthy again")
    assert status(pair, B)["links"][A]["backlog"] == 0


# -- item 9c: the change log is truncated -------------------------------------------------------

def test_the_change_log_stays_bounded_once_peers_acknowledge(pair: Fleet) -> None:
    written, largest = 0, 0
    with pair.admin(A) as api:
        for batch in range(12):
            for i in range(25):
                api.call("POST", f"/things/steady-{batch}-{i}", json={})
                written += 1
            largest = max(largest, status(pair, A)["log"]["entries"])
    assert has_thing(pair, A, "steady-11-24")
    wait_for(lambda: has_thing(pair, B, "steady-11-24"), 20, "B to have every write")
    wait_for(lambda: status(pair, A)["log"]["entries"] == 0, 15, "A's log to be truncated to nothing")
    report = status(pair, A)
    assert report["log"]["start"] == report["head"] >= written, report
    assert report["acknowledged"][B] == report["head"]
    assert log_rows(pair, A) == 0
    with pair.admin(A) as api:
        assert f'geofleet_changelog_entries{{region="{A}"}} 0.0' in api._http.get("/metrics").text
    assert largest < written / 2, f"the log held {largest} of {written} entries at some point"
    create_things(pair, A, ["one-more"])  # a write after truncation gets the next sequence number
    wait_for(lambda: has_thing(pair, B, "one-more"), 10, "B to pull past a truncated log")
    assert status(pair, A)["head"] == report["head"] + 1


def test_a_peer_away_past_the_truncation_catches_up_by_anti_entropy_deletes_included(short_memory: Fleet) -> None:
    fleet = short_memory
    create_things(fleet, A, ["keep", "doomed", "doomed-too"])
    with fleet.admin(A) as api:
        api.call("POST", "/things/keep/shadow", json={"state": {"reported": {"on": True}}})
    wait_for(lambda: has_thing(fleet, B, "doomed-too") and has_shadow(fleet, B, "keep"), 10, "B to hold it all")
    fleet.send_signal(B, signal.SIGKILL)
    with fleet.admin(A) as api:
        api.call("DELETE", "/things/doomed")
        api.call("DELETE", "/things/doomed-too")
        api.call("DELETE", "/things/keep/shadow")
        api.call("POST", "/things/born-while-away", json={})
    acked = status(fleet, A)["acknowledged"][B]
    wait_for(lambda: status(fleet, A)["log"]["start"] >= status(fleet, A)["head"] > acked, 20,
             "A to truncate its log past B's position (retention 2 s)")

    fleet.restart(B)
    wait_for(lambda: has_thing(fleet, B, "born-while-away"), 20, "B to catch up")
    wait_for(lambda: not has_thing(fleet, B, "doomed") and not has_thing(fleet, B, "doomed-too")
             and not has_shadow(fleet, B, "keep"), 20, "the deletes (things and a shadow) to reach B")
    link = wait_for(lambda: (s := status(fleet, B)["links"][A])["lastError"] is None and s, 20, "a clean link")
    assert link["resyncs"] >= 1
    assert link["cursor"] >= acked
    with fleet.admin(A) as a, fleet.admin(B) as b:
        things = [{k: v for k, v in t.items() if k != "thingArn"} for t in a.call("GET", "/things")["things"]]
        assert things == [{k: v for k, v in t.items() if k != "thingArn"} for t in b.call("GET", "/things")["things"]]
        assert {t["thingName"] for t in things} == {"keep", "born-while-away"}
    create_things(fleet, A, ["after-return"])
    wait_for(lambda: has_thing(fleet, B, "after-return"), 10, "the log to flow again")
