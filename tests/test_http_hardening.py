"""Hardening of the HTTP APIs, over real HTTPS against a real two-region fleet: the body limit
holds while a chunked body is read (admin, provisioning and peer APIs), one error shape,
X-Forwarded-For over several header lines, names with a trailing newline, non-ASCII
signatures and tokens, paging, and AWS's attribute rules."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from geofleet.client import CERTIFICATES, THINGS, AdminClient, named_shadows
from geofleet.domain.enrollment import csr_fingerprint, decode_key, device_key, sign
from geofleet.domain.errors import GeofleetError, answer
from geofleet.pki.ca import make_csr, new_key
from tests.conftest import Fleet
from tests.helpers import geofleet

REGIONS = ("us-east-1", "eu-west-1")
HOME = "us-east-1"
PROXY = "127.0.0.2"
"""Requests sent from this loopback address come 'through our proxy' (trusted_proxies)."""
LONDON, VIRGINIA = "81.2.69.142", "8.8.8.8"
BODY_LIMIT = 64 * 1024
BIG_UPLOAD = 128 * 1024 * 1024
RSS_GROWTH_ALLOWED = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def hfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    fleet = Fleet.start(tmp_path_factory.mktemp("hardening") / "fleet", REGIONS,
                        settings={"trusted_proxies": [f"{PROXY}/32"]})
    assert isinstance(fleet, Fleet)
    fleet.wait_healthy()
    try:
        with AdminClient(fleet.data, HOME) as api:
            key = str(api.call("POST", "/enrollment-groups/hardening")["key"])
        yield fleet, key
    finally:
        fleet.stop()


def http(fleet: Fleet, region: str = HOME, token: str | None = "admin", local_address: str = "127.0.0.1",
         timeout: float = 30) -> httpx.Client:
    headers = {"Authorization": f"Bearer {fleet.data.token()}"} if token == "admin" else {}
    transport = httpx.HTTPTransport(local_address=local_address,
                                    verify=ssl.create_default_context(cafile=str(fleet.data.root_ca)))
    return httpx.Client(base_url=fleet.data.config().region(region).http_url, headers=headers, transport=transport,
                        timeout=timeout)


def peer_http(fleet: Fleet, region: str = HOME, as_region: str = "eu-west-1") -> httpx.Client:
    """A client of ``region``'s peer API with ``as_region``'s peer certificate (mutual TLS)."""
    tls = ssl.create_default_context(cafile=str(fleet.data.peer_ca))
    paths = fleet.data.region(as_region)
    tls.load_cert_chain(str(paths.peer_cert), str(paths.peer_key))
    return httpx.Client(base_url=fleet.data.config().region(region).peer_url, verify=tls, timeout=30)


def provision_body(device_id: str, group_key: str, *, signature: str | None = None) -> dict[str, Any]:
    at = int(time.time())
    csr = make_csr(new_key(), device_id).decode()
    signed = sign(device_key(decode_key(group_key), device_id), device_id, csr_fingerprint(csr), at)
    return {"deviceId": device_id, "certificateSigningRequest": csr, "enrollmentGroup": "hardening",
            "timestamp": at, "signature": signed if signature is None else signature}


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


class PeakMemory:
    """How far a process's resident memory rose, at its peak, during a block: the kernel's
    high-water mark (VmHWM), reset on entry through /proc/<pid>/clear_refs. The peak matters,
    not the end: a body read into memory and freed again leaves RSS where it was."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.grown = 0

    def __enter__(self) -> PeakMemory:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.before = _status_bytes(self.pid, "VmRSS")
        return self

    def __exit__(self, *_: object) -> None:
        self.grown = _status_bytes(self.pid, "VmHWM") - self.before


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    """A body without Content-Length (sent chunked): what the old limit never saw."""
    block = b"x" * size
    for _ in range(total // size):
        yield block


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == status, body
    assert body["message"], body
    return dict(body)


# -- 6: the body limit holds while reading ------------------------------------------------------

@pytest.mark.parametrize(("path", "token"), [("/v1/provision", None), ("/things/big/shadow", "admin"),
                                         ("/certificates/from-csr", "admin")])
def test_a_chunked_body_over_the_limit_is_refused_while_read_and_memory_stays_flat(
        hfleet: tuple[Fleet, str], path: str, token: str | None) -> None:
    fleet, _ = hfleet
    with http(fleet, token=token, timeout=120) as client, PeakMemory(fleet.pid(HOME)) as memory:
        response = client.post(path, content=chunks(BIG_UPLOAD), headers={"Content-Type": "application/json"})
    assert memory.grown < RSS_GROWTH_ALLOWED, f"the node's memory peaked {memory.grown / 2**20:.1f} MB higher"
    assert_error(response, 413)
    with http(fleet) as client:
        assert client.get("/health").status_code == 200, "the node keeps serving"


def test_a_declared_length_over_the_limit_is_refused_before_authentication(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    with http(fleet, token=None) as client:
        response = client.post("/things/x", content=b"x" * (BODY_LIMIT + 1))
    assert_error(response, 413)  # not 401: nothing of the request was looked at


def test_a_body_just_under_the_limit_still_reaches_the_route(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    body = json.dumps({"state": {"reported": {"pad": "x" * 1000}}}).encode()
    with http(fleet) as client:
        response = client.post("/things/small/shadow", content=iter([body[:500], body[500:]]))
    assert response.status_code == 200, response.text


def test_the_peer_api_refuses_a_chunked_body_over_its_limit(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    with peer_http(fleet) as client, PeakMemory(fleet.pid(HOME)) as memory:
        response = client.post("/v1/guard/claim", params={"peer": "eu-west-1"}, content=chunks(BIG_UPLOAD),
                               headers={"Content-Type": "application/json"})
    assert memory.grown < RSS_GROWTH_ALLOWED, f"the node's memory peaked {memory.grown / 2**20:.1f} MB higher"
    assert_error(response, 413)


# -- 18: one error shape ------------------------------------------------------------------------

def test_every_error_has_the_code_and_message_shape(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    with http(fleet) as client:
        assert "no route" in assert_error(client.get("/no-such-route"), 404)["message"]
        wrong_method = client.delete("/health")
        assert "not allowed" in assert_error(wrong_method, 405)["message"]
        assert "GET" in wrong_method.headers["allow"]
        assert_error(client.post("/things/x", content=b"{oops", headers={"Content-Type": "application/json"}), 400)
        assert_error(client.patch("/things/x", json={"merge": "not a bool"}), 400)
        assert_error(client.get("/things", params={"maxResults": "many"}), 400)
    with peer_http(fleet) as client:
        assert_error(client.get("/no-such-route"), 404)
        assert_error(client.get("/v1/changes"), 400)  # no peer: was FastAPI's 422 {"detail": ...}
        assert_error(client.get("/v1/changes", params={"peer": "nobody"}), 403)


@pytest.mark.parametrize("attributes", [{"": "v"}, {"bad name": "v"}, {"n": "a value with spaces"},
                                        {"x" * 129: "v"}, {"n": "v" * 801}])
def test_attributes_outside_aws_rules_are_refused(hfleet: tuple[Fleet, str], attributes: dict[str, str]) -> None:
    fleet, _ = hfleet
    name = fleet.new_name("attrs")
    with http(fleet) as client:
        assert_error(client.post(f"/things/{name}", json={"attributes": attributes}), 400)
        assert client.post(f"/things/{name}", json={"attributes": {"ok": "v"}}).status_code == 201
        assert_error(client.patch(f"/things/{name}", json={"attributes": attributes}), 400)
        assert client.get(f"/things/{name}").json()["attributes"] == {"ok": "v"}
        assert_error(client.post(f"/enrollment-groups/{name}", json={"attributes": attributes}), 400)


# -- 7: X-Forwarded-For over several header lines ---------------------------------------------

@pytest.mark.parametrize(("lines", "home"), [
    ([VIRGINIA, LONDON], "eu-west-1"),                 # the client forged line 1; our proxy added line 2
    ([LONDON, VIRGINIA], "us-east-1"),
    ([f"::ffff:{LONDON}"], "eu-west-1"),               # an IPv4-mapped address from a dual-stack proxy
])
def test_forwarded_for_lines_form_one_chain(hfleet: tuple[Fleet, str], lines: list[str], home: str) -> None:
    fleet, group_key = hfleet
    name = fleet.new_name("xff")
    with http(fleet, token=None, local_address=PROXY) as client:
        response = client.post("/v1/provision", json=provision_body(name, group_key),
                               headers=[("X-Forwarded-For", line) for line in lines])
    assert response.status_code == 201, response.text
    assert response.json()["homeRegion"] == home


# -- 14: names ending in a newline --------------------------------------------------------------

def test_names_with_a_trailing_newline_are_refused(hfleet: tuple[Fleet, str]) -> None:
    fleet, group_key = hfleet
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})
    with http(fleet) as client:
        for method, path, body in [
            ("POST", "/things/nl%0A", {}), ("POST", "/things/ok/shadow?name=cfg%0A", {"state": {}}),
            ("POST", "/thing-types/nl%0A", {}), ("POST", "/policies/nl%0A", {"policyDocument": policy}),
            ("POST", "/enrollment-groups/nl%0A", {}), ("POST", "/enrollments/nl%0A", {}),
            ("GET", "/v1/endpoints/nl%0A", None), ("GET", "/v1/presence/nl%0A", None),
            ("GET", "/things/ok/shadow?name=cfg%0A", None),
            ("GET", "/api/things/shadow/ListNamedShadowsForThing/nl%0A", None),
        ]:
            response = client.request(method, path, json=body)
            assert response.status_code == 400, (path, response.text)
            assert "invalid" in response.json()["message"], path
    with http(fleet, token=None) as client:
        response = client.post("/v1/provision", json=provision_body("dev-nl\n", group_key))
    assert_error(response, 400)


# -- 15: non-ASCII signatures and tokens ----------------------------------------------------------

@pytest.mark.parametrize("signature", ["é" * 64, "\u0663" * 64, "ü"])
def test_a_non_ascii_signature_is_unauthorized_not_a_crash(hfleet: tuple[Fleet, str], signature: str) -> None:
    fleet, group_key = hfleet
    with http(fleet, token=None) as client:
        response = client.post("/v1/provision", json=provision_body(fleet.new_name("sig"), group_key,
                                                                   signature=signature))
    assert "signature" in assert_error(response, 401)["message"]


def test_a_non_ascii_admin_token_is_unauthorized(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    with http(fleet, token=None) as client:
        response = client.get("/things", headers={b"Authorization": "Bearer é€".encode()})
    assert "Bearer" in assert_error(response, 401)["message"]


# -- 16: paging ---------------------------------------------------------------------------------

def test_things_are_listed_a_page_at_a_time(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    with AdminClient(fleet.data, HOME) as api:
        for i in range(7):
            api.call("POST", f"/things/page-{i}")
        everything = [t["thingName"] for t in api.call("GET", "/things")["things"]]
        assert "nextToken" not in api.call("GET", "/things")
        first, token = api.page(THINGS, 3)
        assert len(first) == 3
        assert token is not None
        paged = [t["thingName"] for t in api.every(THINGS, 3)]
    assert paged == everything == sorted(everything), "every thing once, in name order"
    assert {f"page-{i}" for i in range(7)} <= set(paged)


def test_certificates_and_named_shadows_are_paged_as_aws_does(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    thing = fleet.new_name("shadowed")
    with http(fleet) as client:
        for i in range(5):
            csr = make_csr(new_key(), f"c{i}").decode()
            client.post("/certificates/from-csr", json={"certificateSigningRequest": csr})
            client.post(f"/things/{thing}/shadow", params={"name": f"s{i}"}, content=b'{"state":{"reported":{}}}')
        client.post(f"/things/{thing}/shadow", content=b'{"state":{"reported":{"classic":1}}}')
        page = client.get(f"/api/things/shadow/ListNamedShadowsForThing/{thing}", params={"pageSize": 2}).json()
        assert page["results"] == ["s0", "s1"]
        assert page["nextToken"]
        assert isinstance(page["timestamp"], int)
        certificates = client.get("/certificates", params={"pageSize": 2}).json()
        assert len(certificates["certificates"]) == 2
        assert certificates["nextMarker"]
        assert_error(client.get("/certificates", params={"pageSize": 251}), 400)
        assert_error(client.get(f"/api/things/shadow/ListNamedShadowsForThing/{thing}", params={"pageSize": 101}), 400)
    with AdminClient(fleet.data, HOME) as api:
        assert list(api.every(named_shadows(thing), 2)) == [f"s{i}" for i in range(5)], "the classic one is not named"
        all_ids = [c["certificateId"] for c in api.call("GET", "/certificates")["certificates"]]
        assert [c["certificateId"] for c in api.every(CERTIFICATES, 2)] == all_ids


@pytest.mark.parametrize("tamper", ["garbage", "!!!", "", "x" * 2000, "flip", "other-listing"])
def test_a_bad_page_token_is_an_invalid_request(hfleet: tuple[Fleet, str], tamper: str) -> None:
    fleet, _ = hfleet
    with http(fleet) as client:
        for i in range(3):
            client.post(f"/things/tok-{i}")
        token = client.get("/things", params={"maxResults": 1}).json()["nextToken"]
        shadow_token = None
        if tamper == "flip":
            bad = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        elif tamper == "other-listing":
            bad = token
            shadow_token = bad
        else:
            bad = tamper
        if shadow_token is not None:  # a things token given to the certificates listing
            response = client.get("/certificates", params={"marker": shadow_token})
        else:
            response = client.get("/things", params={"maxResults": 1, "nextToken": bad})
        if tamper == "":
            assert response.status_code == 200, "an empty token is the first page"
        else:
            assert_error(response, 400)


def test_the_cli_lists_every_page_or_one_page(hfleet: tuple[Fleet, str]) -> None:
    fleet, _ = hfleet
    thing = fleet.new_name("cli")
    with http(fleet) as client:
        for i in range(3):
            client.post(f"/things/{thing}/shadow", params={"name": f"n{i}"}, content=b'{"state":{"reported":{}}}')
    base = ["--data-dir", str(fleet.data.root), "--region", HOME, "--json"]
    assert json.loads(geofleet("shadow", "list", thing, *base).stdout) == ["n0", "n1", "n2"]
    first = json.loads(geofleet("shadow", "list", thing, *base, "--max-results", "2").stdout)
    assert first["items"] == ["n0", "n1"]
    rest = json.loads(geofleet("shadow", "list", thing, *base, "--next-token", first["nextToken"]).stdout)
    assert rest == ["n2"]
    bad = geofleet("shadow", "list", thing, *base, "--next-token", "forged", check=False)
    assert bad.returncode == 2
    assert "nextToken" in bad.stderr
    assert "Traceback" not in bad.stderr
    certificates = json.loads(geofleet("cert", "list", *base).stdout)
    assert certificates
    assert all("certificatePem" not in c for c in certificates)


def test_the_client_reports_an_error_body_that_is_not_an_object_as_sent() -> None:
    with pytest.raises(GeofleetError, match=r"\[\"bad gateway\"\]") as raised:
        answer(httpx.Response(502, json=["bad gateway"]))
    assert raised.value.status == 502
