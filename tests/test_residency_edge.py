"""Data residency at the edge of a real three-region fleet with a DE -> eu-west-1 rule: a German
device (provisioned from a German address through the trusted proxy) is admitted only in
eu-west-1, every route about its data answers 421 with where to ask elsewhere, the application
SDK follows that to eu-west-1, and moving the device keeps, narrows or widens its scope only
from a region that holds its data (the CLI follows the 421), cutting the sessions it leaves."""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from geofleet.app import FleetApp, Region
from geofleet.client import AdminClient
from geofleet.domain.errors import GeofleetError
from geofleet.domain.residency import WrongRegion
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import REGIONS, Fleet
from tests.helpers import Device, geofleet, wait_for
from tests.test_provisioning import PROXY, post, request_body

US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-1"
BERLIN = "85.214.132.117"
"""A German address (iptocc: DE): the residency rule keeps its devices in eu-west-1."""
NOT_IN_EU = [US, AP]


@dataclass
class EdgeFleet:
    fleet: Fleet
    group_key: str
    files: Path

    @property
    def root(self) -> str:
        return str(self.fleet.data.root)

    def provision_german(self, prefix: str = "de") -> str:
        """A device provisioned from Berlin: its thing says geofleet:regions = eu-west-1."""
        name = self.fleet.new_name(prefix)
        key = new_key()
        answer = post(self.fleet, US, request_body(name, self.group_key, make_csr(key, name).decode()), BERLIN)
        assert answer.status_code == 201, answer.text
        body = answer.json()
        assert [e["region"] for e in body["endpoints"]] == [EU], "the DE rule permits eu-west-1 only"
        (self.files / f"{name}.cert.pem").write_text(body["certificatePem"])
        (self.files / f"{name}.key.pem").write_bytes(key_pem(key))
        (self.files / "ca.pem").write_text(body["caChain"][-1])
        # every region knows the device (its stub at least) and its certificate's attachment
        wait_for(lambda: all(self.principals(r, name) for r in REGIONS), 10, f"{name} known in every region")
        return name

    def principals(self, region: str, name: str) -> list[str]:
        with AdminClient(self.fleet.data, region) as api:
            try:
                return list(api.call("GET", f"/things/{name}/principals")["principals"])
            except GeofleetError:
                return []

    def device(self, name: str, region: str) -> Device:
        return Device(name, self.fleet.port(region), self.files / "ca.pem", self.files / f"{name}.cert.pem",
                      self.files / f"{name}.key.pem")

    def http(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.fleet.data.root_ca)), timeout=10,
                            headers={"Authorization": f"Bearer {self.fleet.data.token()}"})

    def url(self, region: str) -> str:
        return self.fleet.data.config().region(region).http_url

    def move(self, name: str, to: str, region: str, regions: str | None = None) -> Any:
        args = ["device", "move", name, "--to", to, "--data-dir", self.root, "--region", region, "--json"]
        return geofleet(*args, *(["--regions", regions] if regions else []), check=False)


@pytest.fixture(scope="module")
def efleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeFleet]:
    root = tmp_path_factory.mktemp("edge")
    fleet = Fleet.start(root / "fleet", tuple(REGIONS),
                        settings={"trusted_proxies": [f"{PROXY}/32"], "residency": {"DE": [EU]}})
    assert isinstance(fleet, Fleet)
    try:
        fleet.wait_healthy()
        with AdminClient(fleet.data, US) as api:
            key = api.call("POST", "/enrollment-groups/factory", json={"attributes": {"owner": "Jana_Schmidt"}})["key"]
        wait_for(lambda: all(_has_group(fleet, r) for r in REGIONS), 10, "the enrollment group in every region")
        files = root / "devices"
        files.mkdir()
        yield EdgeFleet(fleet, key, files)
    finally:
        fleet.stop()


def _has_group(fleet: Fleet, region: str) -> bool:
    with AdminClient(fleet.data, region) as api:
        return any(g["name"] == "factory" for g in api.call("GET", "/enrollment-groups")["enrollmentGroups"])


def _logged(edge: EdgeFleet, region: str, line: str) -> bool:
    return line in edge.fleet.data.region(region).log.read_text(errors="replace")


def test_a_german_device_is_admitted_in_eu_west_1_only(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    for region in NOT_IN_EU:
        assert not efleet.device(name, region).try_connect(), f"{region} is outside the device's scope"
        line = (f"refused {name} from 127.0.0.1: device {name} keeps its data in {EU} only (its residency scope), "
                f"not in {region}")
        wait_for(functools.partial(_logged, efleet, region, line), 10, f"{region}'s log line")
    device = efleet.device(name, EU).connect()
    try:
        assert device.subscribe(f"cmd/{name}/#") == [1]
    finally:
        device.close()


def test_an_unscoped_device_is_admitted_everywhere(efleet: EdgeFleet) -> None:
    name = efleet.fleet.create_device(region=US)  # no geofleet:regions: every region
    for region in REGIONS:
        device = efleet.fleet.device(name, region)
        wait_for(device.try_connect, 10, f"{name} admitted in {region}")


def _expect_421(response: httpx.Response) -> None:
    assert response.status_code == 421, response.text
    body = response.json()
    assert body["code"] == 421
    assert body["regions"] == [EU]
    assert f"ask {EU}" in body["message"]


def test_every_route_about_the_devices_data_answers_421_outside_its_scope(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    device = efleet.device(name, EU).connect()
    try:
        device.subscribe(f"cmd/{name}/#")
        with efleet.http() as http:
            eu, us = efleet.url(EU), efleet.url(US)
            update = {"state": {"reported": {"temp": 21}}}
            assert http.post(f"{eu}/things/{name}/shadow", json=update).status_code == 200
            assert http.post(f"{eu}/things/{name}/shadow", params={"name": "cfg"}, json=update).status_code == 200
            in_scope = {
                "locate": http.get(f"{eu}/v1/presence/{name}"),
                "get shadow": http.get(f"{eu}/things/{name}/shadow"),
                "named shadows": http.get(f"{eu}/api/things/shadow/ListNamedShadowsForThing/{name}"),
                "send": http.post(f"{eu}/v1/devices/{name}/messages", params={"topic": f"cmd/{name}/x"},
                                  content=b"hi"),
                "describe": http.get(f"{eu}/things/{name}"),
                "update": http.patch(f"{eu}/things/{name}", json={"attributes": {"room": "4.12"}}),
            }
            assert {k: r.status_code for k, r in in_scope.items()} == dict.fromkeys(in_scope, 200)
            assert in_scope["locate"].json()["region"] == EU
            assert in_scope["named shadows"].json()["results"] == ["cfg"]
            assert in_scope["describe"].json()["attributes"]["owner"] == "Jana_Schmidt"
            device.wait_message(f"cmd/{name}/x")
            outside = {
                "locate": http.get(f"{us}/v1/presence/{name}"),
                "get shadow": http.get(f"{us}/things/{name}/shadow"),
                "get named shadow": http.get(f"{us}/things/{name}/shadow", params={"name": "cfg"}),
                "update shadow": http.post(f"{us}/things/{name}/shadow", json=update),
                "delete shadow": http.delete(f"{us}/things/{name}/shadow"),
                "named shadows": http.get(f"{us}/api/things/shadow/ListNamedShadowsForThing/{name}"),
                "send": http.post(f"{us}/v1/devices/{name}/messages", params={"topic": f"cmd/{name}/x"},
                                  content=b"hi"),
                "describe": http.get(f"{us}/things/{name}"),
                "update": http.patch(f"{us}/things/{name}", json={"attributes": {"room": "1"}}),
                "delete": http.delete(f"{us}/things/{name}"),
                "create again": http.post(f"{us}/things/{name}", json={}),
            }
            for what, response in outside.items():
                assert response.status_code == 421, f"{what}: {response.text}"
                _expect_421(response)
            listed = {t["thingName"]: t for t in http.get(f"{us}/things").json()["things"]}
            assert listed[name]["attributes"] == {"geofleet:homeRegion": EU, "geofleet:regions": EU}, \
                "the listing shows the stub: where it lives, no owner"
            assert http.get(f"{us}/v1/endpoints/{name}").json()["endpoints"][0]["region"] == EU, \
                "the concierge answers from the stub"
            kept = http.get(f"{eu}/things/{name}").json()
            assert kept["attributes"]["room"] == "4.12", "no write outside the scope reached the device's thing"
    finally:
        device.close()


def test_a_thing_may_not_be_created_or_rescoped_from_outside_its_new_scope(efleet: EdgeFleet) -> None:
    name = efleet.fleet.new_name("eu-only")
    with efleet.http() as http:
        created_outside = http.post(f"{efleet.url(US)}/things/{name}", json={"attributes": {"geofleet:regions": EU}})
        _expect_421(created_outside)
        assert http.post(f"{efleet.url(EU)}/things/{name}",
                         json={"attributes": {"geofleet:regions": EU, "owner": "x"}}).status_code == 201
        other = efleet.fleet.new_name("everywhere")
        assert http.post(f"{efleet.url(US)}/things/{other}", json={"attributes": {"owner": "y"}}).status_code == 201
        wait_for(lambda: http.get(f"{efleet.url(AP)}/things/{other}").status_code == 200, 10, f"{other} in AP")
        narrowed_from_outside = http.patch(f"{efleet.url(AP)}/things/{other}",
                                           json={"attributes": {"geofleet:regions": EU}})
        _expect_421(narrowed_from_outside)
        assert "only a region in both holds its data" in narrowed_from_outside.json()["message"]
        replaced = http.patch(f"{efleet.url(EU)}/things/{other}",
                              json={"attributes": {"geofleet:regions": f"{US},{AP}"}})
        assert replaced.status_code == 421, "eu-west-1 would leave the scope it writes"
        assert sorted(replaced.json()["regions"]) == sorted([US, AP])


def test_the_application_sdk_follows_421_to_the_devices_region(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    device = efleet.device(name, EU).connect()
    regions = [Region(r.name, r.http_url) for r in efleet.fleet.data.config().regions]

    async def run() -> None:
        async with FleetApp(regions, efleet.fleet.data.token(), efleet.fleet.data.root_ca, prefer=[US]) as app:
            assert (await app.rank())[0].name == US, "the app asks us-east-1 first"
            where = await app.locate(name)
            assert (where.connected, where.region, where.answered_by) == (True, EU, EU)
            updated = await app.update_shadow(name, {"state": {"desired": {"led": "on"}}})
            assert updated["state"]["desired"] == {"led": "on"}
            shadow = await app.get_shadow(name)
            assert shadow["state"]["desired"] == {"led": "on"}
            assert await app.send(name, f"cmd/{name}/reboot", "{}", timeout=10) == EU
            device.wait_message(f"cmd/{name}/reboot")
        async with FleetApp(regions[:1], efleet.fleet.data.token(), efleet.fleet.data.root_ca) as only_us:
            with pytest.raises(GeofleetError, match=f"the fleet says to ask {EU}, and this application was not "
                                                    "given any of those regions' URLs"):
                await only_us.get_shadow(name)

    try:
        device.subscribe(f"cmd/{name}/#")
        asyncio.run(run())
    finally:
        device.close()


def test_the_admin_client_and_cli_raise_wrong_region_with_its_regions(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    with AdminClient(efleet.fleet.data, AP) as api, pytest.raises(WrongRegion) as caught:
        api.call("GET", f"/things/{name}/shadow")
    assert caught.value.regions == [EU]
    shown = geofleet("shadow", "get", name, "--data-dir", efleet.root, "--region", AP, check=False)
    assert shown.returncode == 1
    assert shown.stderr.strip() == f"geofleet: {caught.value.message}"
    assert "Traceback" not in shown.stderr
    described = geofleet("thing", "get", name, "--data-dir", efleet.root, "--region", US, check=False)
    assert (described.returncode, f"ask {EU}" in described.stderr) == (1, True)


def _shadow_in(edge: EdgeFleet, region: str, name: str) -> Any:
    with edge.http() as http:
        response = http.get(f"{edge.url(region)}/things/{name}/shadow")
        return response.json() if response.status_code == 200 else None


def test_moving_a_device_widens_and_narrows_its_scope_only_from_a_region_in_both(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    with efleet.http() as http:
        assert http.post(f"{efleet.url(EU)}/things/{name}/shadow",
                         json={"state": {"reported": {"temp": 19}}}).status_code == 200

    kept = efleet.move(name, US, EU)
    assert kept.returncode == 2, "without --regions the permitted regions stay, and us-east-1 is not one"
    assert kept.stderr.strip() == (
        f"geofleet: device {name!r} may keep its data only in {EU} (its residency scope), not in {US}: to move it "
        f"there, pass the regions it may use from now on, {US} among them (--regions, or \"regions\" in the request)")

    apart = efleet.move(name, US, EU, regions=US)
    assert apart.returncode == 2
    assert f"no region is in both, so no region could carry its data over. Do it in two steps: first widen its " \
           f"regions to {EU},{US}" in apart.stderr

    for bad, message in [((EU, f"{EU},mars-1"), "unknown region(s) 'mars-1' in regions; this fleet has: "),
                         ((US, EU), f"the new home {US} must be one of the regions given ({EU})"),
                         (("mars-1", None), "unknown region 'mars-1'; this fleet has: ")]:
        refused = efleet.move(name, bad[0], EU, regions=bad[1])
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr

    with AdminClient(efleet.fleet.data, US) as api, pytest.raises(WrongRegion) as asked_outside:
        api.call("POST", f"/things/{name}/move", json={"region": EU, "regions": [EU, US]})
    assert asked_outside.value.regions == [EU], "only eu-west-1 holds the data"

    widened = efleet.move(name, US, US, regions=f"{EU},{US}")  # asked of us-east-1: the CLI follows to eu-west-1
    assert widened.returncode == 0, widened.stderr
    assert f"{US} may not do this for the device: asking {EU}" in widened.stderr
    moved = json.loads(widened.stdout)
    assert (moved["homeRegion"], moved["regions"]) == (US, sorted([EU, US]))
    assert [e["region"] for e in moved["endpoints"]] == [US, EU]
    wait_for(lambda: (_shadow_in(efleet, US, name) or {}).get("state") == {"reported": {"temp": 19}}, 15,
             "the shadow to reach us-east-1, now in scope")
    wait_for(lambda: efleet.device(name, US).try_connect(), 10, "the device admitted in us-east-1")
    assert not efleet.device(name, AP).try_connect(), "ap-southeast-1 is still outside"

    narrowed = efleet.move(name, EU, AP, regions=EU)  # ap-southeast-1 holds nothing: the CLI follows to EU
    assert narrowed.returncode == 0, narrowed.stderr
    assert json.loads(narrowed.stdout)["regions"] == [EU]
    wait_for(lambda: _status(efleet, US, f"/things/{name}/shadow") == 421, 10, "us-east-1 out of the scope again")
    assert _shadow_in(efleet, EU, name)["state"] == {"reported": {"temp": 19}}


def _status(edge: EdgeFleet, region: str, path: str) -> int:
    with edge.http() as http:
        return http.get(f"{edge.url(region)}{path}").status_code


def test_a_connected_device_is_cut_when_its_scope_leaves_the_region_and_cannot_come_back(efleet: EdgeFleet) -> None:
    name = efleet.provision_german()
    widened = efleet.move(name, EU, EU, regions=f"{EU},{US}")
    assert widened.returncode == 0, widened.stderr
    device = wait_for(lambda: _connected(efleet, name, US), 10, "the device connected in us-east-1")
    try:
        narrowed = efleet.move(name, EU, EU, regions=EU)  # written in eu-west-1; us-east-1 applies it
        assert narrowed.returncode == 0, narrowed.stderr
        wait_for(lambda: device.disconnects, 10, "us-east-1 to close the session")
    finally:
        device.close()
    assert not efleet.device(name, US).try_connect(), "refused from now on"
    assert efleet.device(name, EU).try_connect()


def _connected(edge: EdgeFleet, name: str, region: str) -> Device | None:
    device = edge.device(name, region)
    try:
        return device.connect(5)
    except (ConnectionRefusedError, AssertionError, OSError):
        device.close()
        return None


GATEWAY_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect",
     "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:*:*:topic/$aws/things/*"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/$aws/things/*"},
]}


def test_a_gateway_cannot_write_a_scoped_devices_shadow_outside_its_scope(efleet: EdgeFleet) -> None:
    """A gateway (unscoped, admitted everywhere) whose policy reaches every thing's shadow: in
    us-east-1 a German device's shadow is refused with AWS's 403, and nothing of it is stored."""
    name = efleet.provision_german()
    with efleet.fleet.admin(US) as api:
        api.call("POST", "/policies/gateway", json={"policyDocument": json.dumps(GATEWAY_POLICY)})
    gateway = efleet.fleet.new_name("gw")
    geofleet("device", "create", gateway, "--data-dir", efleet.root, "--region", US, "--out",
             str(efleet.fleet.devices_dir), "--policy", "gateway")
    device = efleet.fleet.device(gateway, US).connect()
    try:
        device.subscribe(f"$aws/things/{name}/shadow/update/+")
        answer = device.request(f"$aws/things/{name}/shadow/update",
                                {"state": {"reported": {"temp": 30}}, "clientToken": "t-1"})
        assert answer.topic.endswith("/rejected")
        body = answer.json()
        assert (body["code"], body["clientToken"]) == (403, "t-1")
        assert body["message"] == (f"thing {name}'s shadows rest only in {EU} (its residency scope), not in {US}: "
                                   "connect there")
    finally:
        device.close()
    with efleet.http() as http:
        assert http.get(f"{efleet.url(EU)}/things/{name}/shadow").status_code == 404, "no shadow was written"


ANY_CLIENT_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"}]}


def test_a_device_cannot_bring_its_data_outside_its_scope_under_another_client_id(efleet: EdgeFleet) -> None:
    """Its certificate is judged by the things it is attached to, whatever client id it sends
    (here with a policy that lets it connect under any client id)."""
    name = efleet.provision_german()
    cert_id = efleet.principals(EU, name)[0]
    with efleet.fleet.admin(EU) as api:
        api.call("POST", "/policies/any-client", json={"policyDocument": json.dumps(ANY_CLIENT_POLICY)})
        api.call("PUT", f"/policies/any-client/targets/{cert_id}")
    wait_for(lambda: _policy_targets(efleet, US, "any-client") == [cert_id], 10, "the attachment in us-east-1")
    alias = efleet.fleet.new_name("alias")
    assert not Device(alias, efleet.fleet.port(US), efleet.files / "ca.pem", efleet.files / f"{name}.cert.pem",
                      efleet.files / f"{name}.key.pem").try_connect()
    line = (f"refused {alias} from 127.0.0.1: device {name} keeps its data in {EU} only (its residency scope), "
            f"not in {US}")
    wait_for(functools.partial(_logged, efleet, US, line), 10, "us-east-1's log line")
    assert Device(alias, efleet.fleet.port(EU), efleet.files / "ca.pem", efleet.files / f"{name}.cert.pem",
                  efleet.files / f"{name}.key.pem").try_connect(), "in its scope the policy decides"


def _policy_targets(edge: EdgeFleet, region: str, policy: str) -> list[str]:
    with edge.fleet.admin(region) as api:
        try:
            return list(api.call("GET", f"/policies/{policy}/targets")["targets"])
        except GeofleetError:
            return []
