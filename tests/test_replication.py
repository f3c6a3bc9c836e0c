"""Active-active replication on a real three-region fleet: identity everywhere, revocation
everywhere, concurrent writes converging, partitions healing, peers authenticated."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from geofleet.domain.errors import GeofleetError
from tests.conftest import REGIONS, Fleet
from tests.helpers import wait_for

A, B, C = REGIONS


def everywhere(fleet: Fleet, method: str, path: str, **kw: Any) -> dict[str, Any]:
    """The same call in every region; ARNs (which name the region) left out for comparison."""
    answers = {}
    for region in REGIONS:
        with fleet.admin(region) as api:
            try:
                answers[region] = _without_arns(api.call(method, path, **kw))
            except GeofleetError as error:
                answers[region] = {"error": error.status}
    return answers


def _without_arns(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_arns(v) for k, v in value.items() if not k.endswith("Arn")}
    if isinstance(value, list):
        return [_without_arns(v) for v in value]
    return value


def same_everywhere(fleet: Fleet, path: str, timeout: float = 10.0, what: str = "") -> dict[str, Any]:
    def agreed() -> dict[str, Any] | None:
        answers = everywhere(fleet, "GET", path)
        first = answers[A]
        return first if "error" not in first and all(a == first for a in answers.values()) else None
    return wait_for(agreed, timeout, what or f"{path} to be identical in every region")


def shadow_state(fleet: Fleet, thing: str, timeout: float = 10.0) -> dict[str, Any]:
    def agreed() -> dict[str, Any] | None:
        states = {r: a.get("state") for r, a in everywhere(fleet, "GET", f"/things/{thing}/shadow").items()}
        first = states[A]
        return first if first is not None and all(s == first for s in states.values()) else None
    return wait_for(agreed, timeout, f"shadow of {thing} to converge")


def test_device_created_in_one_region_connects_to_every_other(fleet: Fleet) -> None:
    name = fleet.create_device(region=A)
    for region in (B, C):
        device = fleet.device(name, region=region)
        wait_for(device.try_connect, 10, f"{name} to be admitted in {region}")
    same_everywhere(fleet, f"/things/{name}")


def test_revocation_in_one_region_cuts_the_session_in_another(fleet: Fleet) -> None:
    name = fleet.create_device(region=A)
    cert = fleet.cert_id(name, A)
    wait_for(lambda: "error" not in everywhere(fleet, "GET", f"/certificates/{cert}")[B], 10, "cert in B")
    device = fleet.device(name, region=A).connect()
    device.client.reconnect_delay_set(60, 60)
    # How fast (the 1 s target) is bench/replication.py's revocation phase; here: that it happens.
    with fleet.admin(B) as api:
        api.call("POST", f"/certificates/{cert}/revoke")
    wait_for(lambda: device.disconnects, 5, "region A to cut the revoked device")
    device.client.loop_stop()
    for region in REGIONS:
        assert not fleet.device(name, region=region).try_connect(), region


def test_revoked_wins_over_a_later_reactivation_elsewhere(fleet: Fleet) -> None:
    name = fleet.create_device(region=A)
    cert = fleet.cert_id(name, A)
    same_everywhere(fleet, f"/certificates/{cert}")
    with fleet.admin(C) as api:
        api.call("POST", "/replication/pause")  # C hears nothing for now
        api.call("PUT", f"/certificates/{cert}/status", json={"newStatus": "INACTIVE"})
    with fleet.admin(A) as api:
        api.call("POST", f"/certificates/{cert}/revoke")
    with fleet.admin(C) as api:
        api.call("PUT", f"/certificates/{cert}/status", json={"newStatus": "ACTIVE"})  # later clock, still loses
        api.call("POST", "/replication/resume")
    final = same_everywhere(fleet, f"/certificates/{cert}")
    assert final["status"] == "REVOKED"


def test_concurrent_attribute_writes_converge_last_writer_wins(fleet: Fleet) -> None:
    name = fleet.new_name("thing")
    with fleet.admin(A) as api:
        api.call("POST", f"/things/{name}", json={"attributes": {"v": "0"}})
    same_everywhere(fleet, f"/things/{name}")
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/pause")
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("PATCH", f"/things/{name}", json={"attributes": {"v": region}})
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/resume")
    final = same_everywhere(fleet, f"/things/{name}")
    assert final["attributes"]["v"] == C, "the last write (written last, in C) wins everywhere"


def test_concurrent_shadow_writes_keep_every_leaf(fleet: Fleet) -> None:
    name = fleet.create_device(region=A)
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/pause")
    writes = {A: {"desired": {"color": "red", "same": "A"}}, B: {"desired": {"size": 2, "same": "B"}},
              C: {"reported": {"color": "blue", "same": "C"}}}
    for region, state in writes.items():
        with fleet.admin(region) as api:
            api.call("POST", f"/things/{name}/shadow", content=json.dumps({"state": state}))
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/resume")
    state = shadow_state(fleet, name)
    assert state["desired"] == {"color": "red", "size": 2, "same": "B"}, "both fields survive; B wrote 'same' last"
    assert state["reported"] == {"color": "blue", "same": "C"}
    assert state["delta"] == {"color": "red", "size": 2, "same": "B"}


def test_merged_shadow_change_reaches_the_connected_device(fleet: Fleet) -> None:
    name = fleet.create_device(region=A)
    device = fleet.device(name, region=A).connect()
    device.subscribe(f"$aws/things/{name}/shadow/update/delta", f"$aws/things/{name}/shadow/update/documents")
    with fleet.admin(B) as api:
        api.call("POST", f"/things/{name}/shadow", content=b'{"state":{"desired":{"fan":"on"}}}')
    delta = device.wait_message(f"$aws/things/{name}/shadow/update/delta").json()
    assert delta["state"] == {"fan": "on"}
    documents = device.wait_message(f"$aws/things/{name}/shadow/update/documents").json()
    assert documents["current"]["state"]["desired"] == {"fan": "on"}
    device.close()


def test_attachment_waits_for_its_certificate(fleet: Fleet) -> None:
    """B hears of an attachment before the certificate it names; it applies it when it can."""
    from geofleet.pki.ca import make_csr, new_key

    with fleet.admin(B) as api:
        api.call("POST", f"/replication/pause?peer={A}")
    name = fleet.new_name("late")
    with fleet.admin(A) as api:
        cert = api.call("POST", "/certificates/from-csr",
                        json={"certificateSigningRequest": make_csr(new_key(), name).decode(), "setAsActive": True})
        api.call("POST", f"/things/{name}", json={})
    cert_id = cert["certificateId"]
    with fleet.admin(C) as api:  # C attaches, once it has both from A
        wait_for(lambda: "error" not in everywhere(fleet, "GET", f"/things/{name}")[C], 10, "thing in C")
        wait_for(lambda: "error" not in everywhere(fleet, "GET", f"/certificates/{cert_id}")[C], 10, "cert in C")
        api.call("PUT", f"/things/{name}/principals/{cert_id}")
    with fleet.admin(B) as api:
        wait_for(lambda: api.call("GET", "/replication/status")["parked"] >= 1, 10, "B to park the attachment")
        api.call("POST", f"/replication/resume?peer={A}")
    assert same_everywhere(fleet, f"/things/{name}/principals") == {"principals": [cert_id]}
    with fleet.admin(B) as api:
        wait_for(lambda: api.call("GET", "/replication/status")["parked"] == 0, 10, "nothing parked")


def test_partition_heals_and_digests_agree(fleet: Fleet) -> None:
    with fleet.admin(C) as api:
        api.call("POST", "/replication/pause")
    for region in (A, B):
        with fleet.admin(region) as api:
            api.call("POST", f"/replication/pause?peer={C}")
    made = {region: [f"part-{region}-{i}" for i in range(20)] for region in REGIONS}
    for region, names in made.items():
        with fleet.admin(region) as api:
            for name in names:
                api.call("POST", f"/things/{name}", json={"attributes": {"from": region}})
    with fleet.admin(A) as api:
        assert not any(t["thingName"].startswith(f"part-{C}") for t in api.call("GET", "/things")["things"])
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/resume")
    listing = same_everywhere(fleet, "/things", 20)
    listed = {t["thingName"] for t in listing["things"]}
    assert all(set(n) <= listed for n in made.values())
    for region in REGIONS:
        with fleet.admin(region) as api:
            result = api.call("POST", "/replication/sync")["peers"]
        assert all("error" not in r for r in result.values()), result
    for region in REGIONS:
        with fleet.admin(region) as api:
            api.call("POST", "/replication/sync")
            links = api.call("GET", "/replication/status")["links"]
        assert all(link["digestsAgree"] for link in links.values()), (region, links)


def test_status_metrics_and_cli(fleet: Fleet) -> None:
    from tests.helpers import geofleet

    with fleet.admin(A) as api:
        api.call("POST", f"/things/{fleet.new_name('m')}", json={})
        metrics = api._http.get("/metrics").text
    assert 'geofleet_replication_backlog{source="eu-west-1",target="us-east-1"}' in metrics
    assert "geofleet_replication_lag_seconds" in metrics
    rows = json.loads(geofleet("replication", "status", "--data-dir", str(fleet.data.root), "--json").stdout)
    pairs = {(r["source"], r["target"]) for r in rows}
    assert pairs == {(s, t) for s in REGIONS for t in REGIONS if s != t}
    assert all(r["lastError"] is None for r in rows)
    text = geofleet("replication", "status", "--data-dir", str(fleet.data.root)).stdout
    assert "lag ms" in text
    assert "backlog" in text


def _peer_client(fleet: Fleet, cert: Path | None, key: Path | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(fleet.data.peer_ca))
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=context, timeout=5)


def test_peer_port_refuses_anything_but_region_certificates(fleet: Fleet) -> None:
    url = fleet.data.config().region(A).peer_url
    name = fleet.create_device(region=A)
    strangers = [(None, None), (fleet.devices_dir / f"{name}.cert.pem", fleet.devices_dir / f"{name}.key.pem")]
    for cert, key in strangers:
        with _peer_client(fleet, cert, key) as http, pytest.raises((httpx.HTTPError, ssl.SSLError)):
            http.get(f"{url}/v1/changes", params={"peer": B})
    paths = fleet.data.region(B)
    with _peer_client(fleet, paths.peer_cert, paths.peer_key) as http:
        # (not /v1/changes: B's position there would move, and A's log be truncated, for the real B)
        assert http.get(f"{url}/v1/head", params={"peer": B}).status_code == 200
        refused = http.get(f"{url}/v1/changes", params={"peer": "mars-1"})
        assert refused.status_code == 403
        assert "not a peer region" in refused.json()["message"]
