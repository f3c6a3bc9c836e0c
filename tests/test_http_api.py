"""The HTTP admin API of a real region over real HTTPS: authentication, registry, shadows and
clear errors for bad input."""

from __future__ import annotations

import json
import ssl
from typing import Any

import httpx
import pytest

from geofleet.domain import errors
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import Fleet


def raw(fleet: Fleet, region: str = "us-east-1", token: str | None = "default") -> httpx.Client:
    secret = fleet.data.token() if token == "default" else token
    headers = {} if secret is None else {"Authorization": f"Bearer {secret}"}
    cluster: dict[str, Any] = fleet.cluster
    return httpx.Client(base_url=cluster["regions"][region]["http_url"], headers=headers,
                        verify=ssl.create_default_context(cafile=cluster["root_ca"]))


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_route_but_health_needs_the_admin_token(fleet: Fleet, token: str | None) -> None:
    with raw(fleet, token=token) as http:
        for method, path in [("GET", "/things"), ("POST", "/things/x"), ("GET", "/certificates"),
                             ("GET", "/openapi.json"), ("GET", "/things/x/shadow")]:
            response = http.request(method, path)
            assert response.status_code == 401, path
            assert "Bearer" in response.json()["message"]
        assert http.get("/health").json()["status"] == "ok"


def test_openapi_documents_the_api(fleet: Fleet) -> None:
    with raw(fleet) as http:
        spec = http.get("/openapi.json").json()
    assert {"/things/{thing}", "/certificates/from-csr", "/policies/{name}", "/things/{thing}/shadow",
            "/health"} <= spec["paths"].keys()


def test_thing_lifecycle_and_types(fleet: Fleet) -> None:
    name = fleet.new_name("thing")
    with fleet.admin() as api:
        api.call("POST", "/thing-types/sensor", json={"description": "a sensor"})
        created = api.call("POST", f"/things/{name}", json={"thingTypeName": "sensor", "attributes": {"fw": "1"}})
        assert created["thingArn"].endswith(f":thing/{name}")
        assert api.call("POST", f"/things/{name}", json={"thingTypeName": "sensor", "attributes": {"fw": "1"}}) \
            == created, "CreateThing with identical input is idempotent"
        with pytest.raises(errors.Conflict):
            api.call("POST", f"/things/{name}", json={"attributes": {"fw": "2"}})
        updated = api.call("PATCH", f"/things/{name}", json={"attributes": {"fw": "2", "site": "x"}})
        assert updated["attributes"] == {"fw": "2", "site": "x"}
        assert updated["version"] == 2
        with pytest.raises(errors.Conflict):
            api.call("PATCH", f"/things/{name}", json={"attributes": {"fw": "3"}, "expectedVersion": 1})
        assert name in [t["thingName"] for t in api.call("GET", "/things")["things"]]
        with pytest.raises(errors.Conflict):
            api.call("DELETE", "/thing-types/sensor")  # not deprecated
        api.call("POST", "/thing-types/sensor/deprecate")
        with pytest.raises(errors.InvalidRequest):
            api.call("POST", f"/things/{fleet.new_name()}", json={"thingTypeName": "sensor"})
        with pytest.raises(errors.Conflict):
            api.call("DELETE", "/thing-types/sensor")  # still used
        api.call("DELETE", f"/things/{name}")
        with pytest.raises(errors.NotFound):
            api.call("GET", f"/things/{name}")
        api.call("DELETE", "/thing-types/sensor")


def test_certificate_from_csr_keeps_the_key_on_the_client(fleet: Fleet) -> None:
    key = new_key()
    with fleet.admin() as api:
        cert = api.call("POST", "/certificates/from-csr",
                        json={"certificateSigningRequest": make_csr(key, "csr-device").decode()})
        described = api.call("GET", f"/certificates/{cert['certificateId']}")
    assert described["status"] == "INACTIVE"
    assert "PRIVATE KEY" not in json.dumps(cert)
    assert key_pem(key).decode() not in json.dumps(described)


def test_revocation_is_terminal_and_revoked_certificates_are_kept(fleet: Fleet) -> None:
    with fleet.admin() as api:
        cert = api.call("POST", "/certificates/from-csr",
                        json={"certificateSigningRequest": make_csr(new_key(), "r").decode(), "setAsActive": True})
        cert_id = cert["certificateId"]
        assert api.call("POST", f"/certificates/{cert_id}/revoke")["status"] == "REVOKED"
        with pytest.raises(errors.Conflict, match="cannot be undone"):
            api.call("PUT", f"/certificates/{cert_id}/status", json={"newStatus": "ACTIVE"})
        with pytest.raises(errors.Conflict, match="revocation record"):
            api.call("DELETE", f"/certificates/{cert_id}")


def test_policies_and_attachments(fleet: Fleet) -> None:
    name = fleet.create_device()
    cert = fleet.cert_id(name)
    policy = fleet.new_name("pol")
    document = json.dumps({"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}]})
    with fleet.admin() as api:
        api.call("POST", f"/policies/{policy}", json={"policyDocument": document})
        api.call("PUT", f"/policies/{policy}/targets/{cert}")
        assert set(api.call("GET", f"/certificates/{cert}/policies")["policies"]) == {policy, "geofleet-default-device"}
        with pytest.raises(errors.Conflict, match="attached"):
            api.call("DELETE", f"/policies/{policy}")
        assert api.call("PUT", f"/policies/{policy}", json={"policyDocument": document})["policyVersionId"] == "2"
        api.call("DELETE", f"/policies/{policy}/targets/{cert}")
        api.call("DELETE", f"/policies/{policy}")
        with pytest.raises(errors.Conflict, match="principals attached"):
            api.call("DELETE", f"/things/{name}")


def test_shadow_over_http(fleet: Fleet) -> None:
    name = fleet.create_device()
    with raw(fleet) as http:
        missing = http.get(f"/things/{name}/shadow")
        assert missing.status_code == 404
        assert missing.json() == {"code": 404, "message": f"No shadow exists with name: '{name}'"}
        updated = http.post(f"/things/{name}/shadow", content=b'{"state":{"desired":{"fan":3}}}')
        assert updated.status_code == 200
        assert updated.json()["version"] == 1
        named = http.post(f"/things/{name}/shadow", params={"name": "cfg"}, content=b'{"state":{"reported":{"a":1}}}')
        assert named.status_code == 200
        got = http.get(f"/things/{name}/shadow").json()
        assert got["state"]["delta"] == {"fan": 3}
        conflict = http.post(f"/things/{name}/shadow", content=b'{"state":{"desired":{"fan":4}},"version":7}')
        assert conflict.status_code == 409
        assert conflict.json()["message"] == "Version conflict"
        bad = http.post(f"/things/{name}/shadow", content=b"{oops")
        assert bad.status_code == 400
        assert bad.json()["message"] == "Invalid JSON"
        big = http.post(f"/things/{name}/shadow", content=json.dumps({"state": {"reported": {"b": "x" * 9000}}}))
        assert big.status_code == 413
        names = http.get(f"/api/things/shadow/ListNamedShadowsForThing/{name}").json()
        assert names["results"] == ["cfg"]
        assert "nextToken" not in names
        assert isinstance(names["timestamp"], int)
        assert http.delete(f"/things/{name}/shadow", params={"name": "cfg"}).json()["version"] == 1


@pytest.mark.parametrize(("csr", "message"), [
    ("not a csr", "not a PEM-encoded"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM-encoded"),
])
def test_malformed_csrs_are_refused(fleet: Fleet, csr: str, message: str) -> None:
    with fleet.admin() as api, pytest.raises(errors.InvalidRequest, match=message):
        api.call("POST", "/certificates/from-csr", json={"certificateSigningRequest": csr})


def test_bad_input_gets_clear_4xx_errors(fleet: Fleet) -> None:
    with raw(fleet) as http:
        for path in ["/things/bad+name", "/things/a%23b", "/things/$aws"]:
            response = http.post(path, json={})
            assert response.status_code == 400, path
            assert "invalid thing name" in response.json()["message"], path
        bad_pem = http.post("/certificates", json={"certificatePem": "-----BEGIN CERTIFICATE-----\nxx"})
        assert bad_pem.status_code == 400
        assert "X.509" in bad_pem.json()["message"]
        wrong_type = http.post("/certificates/from-csr", json={"certificateSigningRequest": 5})
        assert wrong_type.status_code == 400
        assert "certificateSigningRequest" in wrong_type.json()["message"]
        huge = http.post("/certificates/from-csr", content=b"x" * 200_000, headers={"Content-Type": "application/json"})
        assert huge.status_code == 413
        policy = http.post("/policies/p-bad", json={"policyDocument": '{"Statement": [{"Effect": "Maybe"}]}'})
        assert policy.status_code == 400
        assert "Effect" in policy.json()["message"]
        assert http.get("/health").status_code == 200, "the node keeps serving"
