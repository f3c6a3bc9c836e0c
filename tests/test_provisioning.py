"""Geo-aware provisioning over real HTTPS against a real three-region fleet: the right home,
once only across regions, idempotent retries, and clear refusals."""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from geofleet.client import AdminClient
from geofleet.domain.enrollment import csr_fingerprint, decode_key, device_key, sign
from geofleet.domain.placement import owner
from geofleet.domain.policy import claim_client_id
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import REGIONS, Fleet
from tests.helpers import Device, wait_for

PROXY = "127.0.0.2"
"""Requests sent from this loopback address come 'through our proxy' (trusted_proxies)."""
LONDON, VIRGINIA, TOKYO, SAO_PAULO = "81.2.69.142", "8.8.8.8", "133.11.0.1", "200.160.2.3"


@pytest.fixture(scope="module")
def pfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    fleet = Fleet.start(tmp_path_factory.mktemp("prov") / "fleet", tuple(REGIONS),
                        settings={"trusted_proxies": [f"{PROXY}/32"]})
    assert isinstance(fleet, Fleet)
    fleet.wait_healthy()
    with AdminClient(fleet.data, "us-east-1") as api:
        key = api.call("POST", "/enrollment-groups/factory", json={"attributes": {"batch": "b1"}})["key"]
    wait_for(lambda: _group_everywhere(fleet), 10, "the enrollment group in every region")
    yield fleet, key
    fleet.stop()


def _group_everywhere(fleet: Fleet) -> bool:
    return all(_has_group(fleet, region, "factory") for region in REGIONS)


def request_body(device_id: str, group_key: str, csr: str, *, timestamp: int | None = None,
                 group: str = "factory", key: bytes | None = None) -> dict[str, Any]:
    at = int(time.time()) if timestamp is None else timestamp
    signing_key = key or device_key(decode_key(group_key), device_id)
    return {"deviceId": device_id, "certificateSigningRequest": csr, "enrollmentGroup": group, "timestamp": at,
            "signature": sign(signing_key, device_id, csr_fingerprint(csr), at)}


def post(fleet: Fleet, region: str, body: Any, forwarded_for: str | None = None, via_proxy: bool = True,
         raw: bytes | None = None) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=PROXY if via_proxy else "127.0.0.1",
                                    verify=ssl.create_default_context(cafile=str(fleet.data.root_ca)))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    with httpx.Client(transport=transport, timeout=15) as http:
        url = f"{fleet.data.config().region(region).http_url}/v1/provision"
        if raw is not None:
            return http.post(url, content=raw, headers={**headers, "Content-Type": "application/json"})
        return http.post(url, json=body, headers=headers)


@pytest.mark.parametrize(("address", "home"), [(LONDON, "eu-west-1"), (VIRGINIA, "us-east-1"),
                                           (TOKYO, "ap-southeast-1"), (SAO_PAULO, "us-east-1")])
def test_devices_from_several_continents_get_their_home_and_work_everywhere(
        pfleet: tuple[Fleet, str], address: str, home: str, tmp_path: Path) -> None:
    fleet, group_key = pfleet
    name = fleet.new_name("prov")
    key = new_key()
    answer = post(fleet, "ap-southeast-1", request_body(name, group_key, make_csr(key, name).decode()), address)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["homeRegion"] == home
    assert body["endpoints"][0]["region"] == home
    assert sorted(e["region"] for e in body["endpoints"]) == sorted(REGIONS), "every region, home first"
    assert any(home in reason for reason in body["reasons"])
    assert "PRIVATE KEY" not in answer.text
    (tmp_path / "cert.pem").write_text(body["certificatePem"])
    (tmp_path / "key.pem").write_bytes(key_pem(key))
    (tmp_path / "ca.pem").write_text(body["caChain"][-1])
    for endpoint in body["endpoints"]:
        device = Device(name, endpoint["port"], tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
        wait_for(device.try_connect, 10, f"{name} admitted in {endpoint['region']}")


def test_retry_with_the_same_csr_returns_the_same_certificate(pfleet: tuple[Fleet, str]) -> None:
    fleet, group_key = pfleet
    name = fleet.new_name("retry")
    csr = make_csr(new_key(), name).decode()
    first = post(fleet, "us-east-1", request_body(name, group_key, csr), LONDON)
    second = post(fleet, "eu-west-1", request_body(name, group_key, csr, timestamp=int(time.time()) + 1), LONDON)
    assert (first.status_code, second.status_code) == (201, 200)
    assert {"auth", "geo", "guard", "sign", "registry"} <= {
        part.split(";")[0].strip() for part in first.headers["Server-Timing"].split(",")}
    assert first.json()["certificateId"] == second.json()["certificateId"]
    other = post(fleet, "us-east-1", request_body(name, group_key, make_csr(new_key(), name).decode()), LONDON)
    assert other.status_code == 409
    assert "already provisioned" in other.json()["message"]


def test_one_hundred_concurrent_requests_across_regions_give_one_certificate(pfleet: tuple[Fleet, str]) -> None:
    fleet, group_key = pfleet
    name = fleet.new_name("race")
    statuses: list[int] = []
    certificates: set[str] = set()
    lock = threading.Lock()

    def attempt(i: int) -> None:
        csr = make_csr(new_key(), name).decode()
        response = post(fleet, REGIONS[i % 3], request_body(name, group_key, csr), VIRGINIA)
        with lock:
            statuses.append(response.status_code)
            if response.status_code == 201:
                certificates.add(response.json()["certificateId"])

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 100, sorted(statuses)
    assert statuses.count(201) == 1, sorted(statuses)
    assert set(statuses) <= {201, 409, 503}
    with AdminClient(fleet.data, "us-east-1") as api:
        wait_for(lambda: api.call("GET", f"/things/{name}/principals")["principals"] == list(certificates), 10,
                 "exactly the one certificate attached")


def _weak_csrs(name: str) -> list[tuple[str, str]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    def csr(key: Any) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        return request.public_bytes(serialization.Encoding.PEM).decode()
    return [(csr(rsa.generate_private_key(65537, 1024)), "2048"), (csr(ec.generate_private_key(ec.SECP256K1())),
                                                                   "curve"),
            (make_csr(new_key(), "someone-else").decode(), "CN must be the device id"), ("garbage", "PEM")]


def test_bad_requests_are_refused_with_clear_errors(pfleet: tuple[Fleet, str]) -> None:
    fleet, group_key = pfleet
    name = fleet.new_name("bad")
    csr = make_csr(new_key(), name).decode()
    good = request_body(name, group_key, csr)
    cases: list[tuple[Any, int, str]] = [
        ({**good, "signature": "00" * 32}, 401, "signature does not match"),
        (request_body(name, group_key, csr, timestamp=int(time.time()) - 3600), 401, "timestamp"),
        (request_body(name, group_key, csr, group="nobody"), 401, "unknown enrollment group"),
        (request_body(name, group_key, csr, key=b"x" * 32), 401, "signature does not match"),
        ({**good, "deviceId": "bad/name"}, 400, "invalid thing name"),
        ({"deviceId": name}, 400, "invalid request"),
    ]
    cases += [(request_body(name, group_key, bad), 400, message) for bad, message in _weak_csrs(name)]
    for body, status, message in cases:
        response = post(fleet, "us-east-1", body, LONDON)
        assert response.status_code == status, (message, response.text)
        assert message in response.json()["message"], (message, response.text)
    huge = post(fleet, "us-east-1", None, raw=b'{"deviceId": "' + b"x" * 100_000 + b'"}')
    assert huge.status_code == 413
    assert post(fleet, "us-east-1", good, LONDON).status_code == 201, "the refusals claimed nothing"
    replay = post(fleet, "us-east-1", good, LONDON)
    assert replay.status_code == 401
    assert "already used" in replay.json()["message"]


def test_forged_forwarded_for_from_an_untrusted_address_is_ignored(pfleet: tuple[Fleet, str]) -> None:
    fleet, group_key = pfleet
    name = fleet.new_name("forged")
    body = request_body(name, group_key, make_csr(new_key(), name).decode())
    answer = post(fleet, "eu-west-1", body, forwarded_for=TOKYO, via_proxy=False)
    assert answer.status_code == 201
    assert answer.json()["homeRegion"] == "us-east-1", "unknown location (loopback): the default region"


def test_factory_and_device_cli_provision_once(pfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    from tests.helpers import geofleet

    fleet, _ = pfleet
    common = ["--data-dir", str(fleet.data.root), "--region", "us-east-1"]
    group = json.loads(geofleet("enrollment", "create", "line-7", *common, "--json").stdout)
    device_id = fleet.new_name("boot")
    device_key = geofleet("enrollment", "device-key", "--device-id", device_id, "--group-key", group["key"]).stdout
    wait_for(lambda: all(_has_group(fleet, r, "line-7") for r in REGIONS), 10, "the group everywhere")
    listed = json.loads(geofleet("enrollment", "list", *common, "--json").stdout)
    assert all("key" not in g for g in listed)
    assert any(g["name"] == "line-7" for g in listed)
    eu = fleet.data.config().region("eu-west-1").http_url
    boot = ["device", "bootstrap", "--device-id", device_id, "--enrollment-key", device_key.strip(),
            "--group", "line-7", "--root-ca", str(fleet.data.root_ca), "--out", str(tmp_path), "--json"]
    first = json.loads(geofleet(*boot, "--bootstrap", "https://127.0.0.1:1", "--bootstrap", eu).stdout)
    assert first["homeRegion"] == "us-east-1", "loopback is no location: the default region"
    assert first["alreadyProvisioned"] is False
    assert any(r.startswith("location unknown") for r in first["reasons"]), first["reasons"]
    for suffix in (".key.pem", ".cert.pem", ".json"):
        assert (tmp_path / f"{device_id}{suffix}").stat().st_mode & 0o777 == 0o600
    cert = (tmp_path / f"{device_id}.cert.pem").read_text()
    again = json.loads(geofleet(*boot, "--bootstrap", "https://127.0.0.1:1").stdout)
    assert again == {**first, "alreadyProvisioned": True}, "never provisions twice, and says so"
    told = geofleet(*boot[:-1], "--bootstrap", "https://127.0.0.1:1").stdout
    assert "already provisioned" in told
    assert "location unknown" in told
    assert (tmp_path / f"{device_id}.cert.pem").read_text() == cert, "never provisions twice"
    geofleet("enrollment", "revoke", "line-7", *common)
    wait_for(lambda: _group_revoked(fleet, "eu-west-1", "line-7"), 10, "the revocation in eu-west-1")
    other = fleet.new_name("boot")
    other_key = geofleet("enrollment", "device-key", "--device-id", other, "--group-key", group["key"]).stdout
    refused = geofleet("device", "bootstrap", "--device-id", other, "--enrollment-key", other_key.strip(),
                       "--group", "line-7", "--root-ca", str(fleet.data.root_ca), "--out", str(tmp_path / "o"),
                       "--bootstrap", eu, check=False)
    assert refused.returncode == 1
    assert "revoked" in refused.stderr


def _groups(fleet: Fleet, region: str) -> list[dict[str, Any]]:
    with AdminClient(fleet.data, region) as api:
        return list(api.call("GET", "/enrollment-groups")["enrollmentGroups"])


def _has_group(fleet: Fleet, region: str, name: str) -> bool:
    return any(g["name"] == name for g in _groups(fleet, region))


def _group_revoked(fleet: Fleet, region: str, name: str) -> bool:
    return any(g["name"] == name and g["revoked"] for g in _groups(fleet, region))


def test_aws_fleet_provisioning_over_mqtt_with_a_claim_certificate(pfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    fleet, _ = pfleet
    claim_key = new_key()
    with AdminClient(fleet.data, "eu-west-1") as api:
        claim = api.call("POST", "/enrollment-groups/factory/claim-certificate",
                         json={"certificateSigningRequest": make_csr(claim_key, "claim").decode()})
    (tmp_path / "claim.pem").write_text(claim["certificatePem"])
    (tmp_path / "claim.key").write_bytes(key_pem(claim_key))
    ca = fleet.data.root_ca
    port = fleet.port("eu-west-1")
    topics = ["$aws/certificates/create-from-csr/json/accepted", "$aws/certificates/create-from-csr/json/rejected",
              "$aws/provisioning-templates/factory/provision/json/accepted",
              "$aws/provisioning-templates/factory/provision/json/rejected"]
    device = Device(claim_client_id(claim["certificateId"]), port, ca, tmp_path / "claim.pem",
                    tmp_path / "claim.key").connect()
    bystander = Device(claim_client_id(claim["certificateId"], "2"), port, ca, tmp_path / "claim.pem",
                       tmp_path / "claim.key").connect()
    device.subscribe(*topics)
    bystander.subscribe(*topics)

    bad = device.request("$aws/certificates/create-from-csr/json", {"certificateSigningRequest": "nope"})
    assert bad.topic.endswith("/rejected")
    assert bad.json()["statusCode"] == 400
    assert bad.json()["errorCode"] == "InvalidParameters"

    name = fleet.new_name("fleetprov")
    key = new_key()
    created = device.request("$aws/certificates/create-from-csr/json",
                             {"certificateSigningRequest": make_csr(key, name).decode()}).json()
    assert {"certificateId", "certificatePem", "certificateOwnershipToken"} <= created.keys()
    with AdminClient(fleet.data, "eu-west-1") as api:
        assert api.call("GET", f"/certificates/{created['certificateId']}")["status"] == "PENDING_ACTIVATION"
    provisioned = device.request("$aws/provisioning-templates/factory/provision/json",
                                 {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                  "parameters": {"SerialNumber": name}}).json()
    assert provisioned["thingName"] == name
    endpoints = json.loads(provisioned["deviceConfiguration"]["endpoints"])
    assert endpoints[0]["region"] == provisioned["deviceConfiguration"]["homeRegion"]
    assert not any("certificate" in m.topic or "provisioning" in m.topic for m in bystander.messages), \
        "replies go to the requesting connection only"
    wrong = device.request("$aws/provisioning-templates/factory/provision/json",
                           {"certificateOwnershipToken": "forged", "parameters": {"SerialNumber": "x"}}).json()
    assert wrong["errorCode"] == "Unauthorized"
    device.close()
    bystander.close()
    (tmp_path / "dev.pem").write_text(created["certificatePem"])
    (tmp_path / "dev.key").write_bytes(key_pem(key))
    for endpoint in endpoints:
        real = Device(name, endpoint["port"], ca, tmp_path / "dev.pem", tmp_path / "dev.key")
        wait_for(real.try_connect, 10, f"{name} admitted in {endpoint['region']}")
    claim_as_device = Device(claim_client_id(claim["certificateId"], "3"), port, ca, tmp_path / "claim.pem",
                             tmp_path / "claim.key").connect()
    assert claim_as_device.subscribe(f"dt/{name}/#") == [0x80], "a claim certificate can do nothing else"
    claim_as_device.close()


def test_individual_enrollment_and_moving_a_device(pfleet: tuple[Fleet, str]) -> None:
    fleet, _ = pfleet
    name = fleet.new_name("solo")
    with AdminClient(fleet.data, "us-east-1") as api:
        key = decode_key(api.call("POST", f"/enrollments/{name}", json={})["key"])
    wait_for(lambda: all(_enrolled(fleet, r, name) for r in REGIONS), 10, "the enrollment everywhere")
    csr = make_csr(new_key(), name).decode()
    body = {**request_body(name, "", csr, key=key), "enrollmentGroup": None}
    answer = post(fleet, "eu-west-1", body, TOKYO)
    assert answer.status_code == 201, answer.text
    assert answer.json()["homeRegion"] == "ap-southeast-1"
    stranger = fleet.new_name("solo")
    refused = post(fleet, "eu-west-1", {**request_body(stranger, "", csr, key=key), "enrollmentGroup": None}, TOKYO)
    assert refused.status_code == 401
    assert "individual enrollment" in refused.json()["message"]
    from tests.helpers import geofleet

    moved = json.loads(geofleet("device", "move", name, "--to", "eu-west-1", "--data-dir", str(fleet.data.root),
                                "--region", "us-east-1", "--json").stdout)
    assert moved["endpoints"][0]["region"] == "eu-west-1"
    assert moved["homeRegion"] == "eu-west-1"
    with AdminClient(fleet.data, "ap-southeast-1") as api:
        wait_for(lambda: api.call("GET", f"/things/{name}")["attributes"].get("geofleet:homeRegion") == "eu-west-1",
                 10, "the move to replicate")


def _enrolled(fleet: Fleet, region: str, device_id: str) -> bool:
    with AdminClient(fleet.data, region) as api:
        return any(e["name"] == device_id for e in api.call("GET", "/enrollments")["enrollments"])


def test_reprovisioning_with_a_new_key_when_the_group_allows_it(pfleet: tuple[Fleet, str]) -> None:
    fleet, _ = pfleet
    with AdminClient(fleet.data, "us-east-1") as api:
        key = api.call("POST", "/enrollment-groups/refurbished", json={"reprovision": True})["key"]
    wait_for(lambda: all(_has_group(fleet, r, "refurbished") for r in REGIONS), 10, "the group everywhere")
    name = fleet.new_name("refurb")
    first = post(fleet, "us-east-1", {**request_body(name, key, make_csr(new_key(), name).decode()),
                                      "enrollmentGroup": "refurbished"}, LONDON)
    second = post(fleet, "eu-west-1", {**request_body(name, key, make_csr(new_key(), name).decode()),
                                       "enrollmentGroup": "refurbished"}, LONDON)
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert first.json()["certificateId"] != second.json()["certificateId"]
    with AdminClient(fleet.data, "eu-west-1") as api:
        assert api.call("GET", f"/things/{name}/principals")["principals"] == [second.json()["certificateId"]]
        assert api.call("GET", f"/certificates/{first.json()['certificateId']}")["status"] == "INACTIVE", \
            "the earlier key no longer works"


def _claim_session(fleet: Fleet, group: str, tmp_path: Path, region: str = "eu-west-1") -> Device:
    claim_key = new_key()
    with AdminClient(fleet.data, region) as api:
        claim = api.call("POST", f"/enrollment-groups/{group}/claim-certificate",
                         json={"certificateSigningRequest": make_csr(claim_key, "claim").decode()})
    (tmp_path / f"{group}.claim.pem").write_text(claim["certificatePem"])
    (tmp_path / f"{group}.claim.key").write_bytes(key_pem(claim_key))
    session = Device(claim_client_id(claim["certificateId"]), fleet.port(region), fleet.data.root_ca,
                     tmp_path / f"{group}.claim.pem", tmp_path / f"{group}.claim.key").connect()
    session.subscribe("$aws/certificates/create/json/accepted", "$aws/certificates/create/json/rejected",
                      f"$aws/provisioning-templates/{group}/provision/json/accepted",
                      f"$aws/provisioning-templates/{group}/provision/json/rejected")
    return session


def test_create_keys_and_certificate_as_aws_samples_do_by_default(pfleet: tuple[Fleet, str], tmp_path: Path) -> None:
    """AWS's fleet-provisioning sample asks the region for a key pair (CreateKeysAndCertificate):
    the key comes back once, to the claim session, and the device connects with it."""
    fleet, _ = pfleet
    session = _claim_session(fleet, "factory", tmp_path)
    created = session.request("$aws/certificates/create/json", {}).json()
    assert {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"} <= created.keys()
    with AdminClient(fleet.data, "eu-west-1") as api:
        stored = api.call("GET", f"/certificates/{created['certificateId']}")
    assert stored["status"] == "PENDING_ACTIVATION"
    assert "PRIVATE KEY" not in json.dumps(stored), "the region keeps no copy of the key it made"
    name = fleet.new_name("keys")
    provisioned = session.request("$aws/provisioning-templates/factory/provision/json",
                                  {"certificateOwnershipToken": created["certificateOwnershipToken"],
                                   "parameters": {"ThingName": name}}).json()
    assert provisioned.get("thingName") == name, provisioned
    session.close()
    (tmp_path / "made.pem").write_text(created["certificatePem"])
    (tmp_path / "made.key").write_text(created["privateKey"])
    device = Device(name, fleet.port("eu-west-1"), fleet.data.root_ca, tmp_path / "made.pem", tmp_path / "made.key")
    wait_for(device.try_connect, 10, f"{name} connects with the key the region made")


def test_a_group_that_requires_csrs_rejects_create_keys_without_disconnecting(pfleet: tuple[Fleet, str],
                                                                             tmp_path: Path) -> None:
    fleet, _ = pfleet
    with AdminClient(fleet.data, "eu-west-1") as api:
        api.call("POST", "/enrollment-groups/csr-only", json={"requireCsr": True})
    session = _claim_session(fleet, "csr-only", tmp_path)
    refused = session.request("$aws/certificates/create/json", {})
    assert refused.topic == "$aws/certificates/create/json/rejected"
    assert refused.json()["statusCode"] == 400
    assert "requires a CSR" in refused.json()["errorMessage"]
    assert not session.disconnects, "a /rejected answer, never a disconnect"
    session.close()


def test_owner_region_down_gives_503_and_never_a_second_certificate(pfleet: tuple[Fleet, str]) -> None:
    """Runs last in this module: it kills a region of the module's fleet."""
    fleet, group_key = pfleet
    victim = "ap-southeast-1"
    name = next(n for n in (f"orphan-{i}" for i in range(1000)) if owner(n, REGIONS) == victim)
    os.kill(int(str(fleet.region(victim)["pid"])), signal.SIGKILL)
    answer = post(fleet, "us-east-1", request_body(name, group_key, make_csr(new_key(), name).decode()), LONDON)
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    assert victim in answer.json()["message"]
    with AdminClient(fleet.data, "us-east-1") as api:
        assert not any(t["thingName"] == name for t in api.call("GET", "/things")["things"])
