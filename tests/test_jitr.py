"""Just-in-time registration on a three-region fleet: a real customer CA made here, registered
with a proof of possession; paho and AWS IoT Device SDK v2 (awsiotsdk) devices whose first
connect lands in one region while the validation hook runs in the guard key's owner region;
concurrent first connects; unregistered and disabled CAs; a CA set INACTIVE or REVOKED.

The hook is ``tests.jitr_hook:decide`` (a Python entry point run by the region processes): it
allows thing names starting with ``ok-`` and logs which region ran it.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from awsiot import mqtt_connection_builder

from geofleet.domain.errors import Conflict, InvalidRequest, NotFound
from geofleet.domain.jitr import GUARD_PREFIX, registered_topic
from geofleet.domain.placement import owner
from geofleet.domain.policy import DEFAULT_POLICY_NAME
from geofleet.pki.ca import (
    Authority,
    cert_pem,
    certificate_id,
    create_intermediate,
    create_root,
    issue_leaf,
    key_pem,
    new_key,
)
from geofleet.pki.files import write_private, write_public
from tests.conftest import REGIONS, Fleet
from tests.helpers import Device, wait_for

A, B, C = REGIONS
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def jfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("jitr")
    hook_log = root / "hook.jsonl"
    previous = os.environ.get("GEOFLEET_TEST_JITR_LOG")
    os.environ["GEOFLEET_TEST_JITR_LOG"] = str(hook_log)  # the region processes (and restarted ones) inherit it
    try:
        running = Fleet.start(root / "fleet", tuple(REGIONS),
                              settings={"jitr": {"hook": "python", "entryPoint": "tests.jitr_hook:decide"}})
        assert isinstance(running, Fleet)
        running.wait_healthy()
        yield running
        running.stop()
    finally:
        if previous is None:
            del os.environ["GEOFLEET_TEST_JITR_LOG"]
        else:
            os.environ["GEOFLEET_TEST_JITR_LOG"] = previous


def hook_calls(fleet: Fleet, cert_id: str) -> list[dict[str, Any]]:
    path = fleet.data.root.parent / "hook.jsonl"
    if not path.exists():
        return []
    return [c for c in map(json.loads, path.read_text().splitlines()) if c["certificateId"] == cert_id]


# -- a customer's PKI -----------------------------------------------------------------------------

def register_ca(fleet: Fleet, ca: Authority, region: str = A, *, active: bool = True, auto: bool = True,
                config: dict[str, Any] | None = None) -> str:
    with fleet.admin(region) as api:
        code = api.call("GET", "/registrationcode")["registrationCode"]
        verification = issue_leaf(ca, new_key().public_key(), code)
        answer = api.call("POST", "/cacertificate", json={
            "caCertificate": cert_pem(ca.cert).decode(), "verificationCertificate": cert_pem(verification).decode(),
            "setAsActive": active, "allowAutoRegistration": auto,
            "registrationConfig": config or {"policyName": DEFAULT_POLICY_NAME}})
    return str(answer["certificateId"])


def on_every_region(fleet: Fleet, path: str) -> None:
    for region in REGIONS:
        with fleet.admin(region) as api:
            wait_for(lambda api=api: _exists(api, path), 15, f"{path} in {region}")  # type: ignore[misc]


def _exists(api: Any, path: str) -> bool:
    try:
        api.call("GET", path)
    except NotFound:
        return False
    return True


class CustomerDevice:
    """A device certificate issued by the customer's CA (never seen by the fleet before)."""

    def __init__(self, fleet: Fleet, ca: Authority, name: str, *, guard_owner: str | None = None) -> None:
        while True:  # pick a key whose certificate's guard key lives in ``guard_owner``
            key = new_key()
            cert = issue_leaf(ca, key.public_key(), name)
            self.cert_id = certificate_id(cert)
            if guard_owner is None or owner(GUARD_PREFIX + self.cert_id, REGIONS) == guard_owner:
                break
        self.fleet, self.name = fleet, name
        self.cert = fleet.devices_dir / f"{name}.jitr.cert.pem"
        self.key = fleet.devices_dir / f"{name}.jitr.key.pem"
        write_public(self.cert, cert_pem(cert))
        write_private(self.key, key_pem(key))

    def paho(self, region: str) -> Device:
        return Device(self.name, self.fleet.port(region), self.fleet.data.root_ca, self.cert, self.key)

    def connects(self, region: str) -> bool:
        device = self.paho(region)
        try:
            return device.try_connect()
        finally:
            device.close()

    def status(self, region: str = A) -> str | None:
        with self.fleet.admin(region) as api:
            try:
                return str(api.call("GET", f"/certificates/{self.cert_id}")["status"])
            except NotFound:
                return None


class Events:
    """A region's ``/v1/stream`` of ``$aws/events/certificates/registered/#``, read in a thread."""

    def __init__(self, fleet: Fleet, region: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self._fleet, self._region = fleet, region
        self._opened = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        config = self._fleet.data.config().region(self._region)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(self._fleet.data.root_ca)), timeout=None,
                          headers={"Authorization": f"Bearer {self._fleet.data.token()}"}) as http:
            try:
                with http.stream("GET", f"{config.http_url}/v1/stream",
                                 params={"filter": "$aws/events/certificates/registered/#"}) as response:
                    self._response = response
                    self._opened.set()
                    for line in response.iter_lines():
                        if line:
                            self.lines.append(json.loads(line))
            except (httpx.HTTPError, RuntimeError):
                pass  # closed by __exit__

    def registered(self, cert_id: str) -> list[dict[str, Any]]:
        return [json.loads(e["payload"]) | {"topic": e["topic"]} for e in list(self.lines)
                if "payload" in e and json.loads(e["payload"]).get("certificateId") == cert_id]

    def __enter__(self) -> Events:
        self._thread.start()
        assert self._opened.wait(10), f"the event stream of {self._region} did not open"
        return self

    def __exit__(self, *_: object) -> None:
        if self._response is not None:
            self._response.close()


@pytest.fixture(scope="module")
def customer_ca(jfleet: Fleet) -> tuple[Authority, str]:
    ca = create_root("acme", "customer device CA")
    ca_id = register_ca(jfleet, ca)
    on_every_region(jfleet, f"/cacertificate/{ca_id}")
    return ca, ca_id


# -- CA registration ------------------------------------------------------------------------------

def test_ca_registration_needs_a_proof_of_possession(jfleet: Fleet) -> None:
    ca = create_root("acme", "another CA")
    other = create_root("mallory", "CA")
    with jfleet.admin(B) as api:
        code = api.call("GET", "/registrationcode")["registrationCode"]
        pem = cert_pem(ca.cert).decode()

        def register(verification: str | None, ca_pem: str = pem) -> Any:
            return api.call("POST", "/cacertificate", json={"caCertificate": ca_pem,
                                                             "verificationCertificate": verification})

        with pytest.raises(InvalidRequest, match="verificationCertificate is required"):
            register(None)
        wrong_code = issue_leaf(ca, new_key().public_key(), "0" * 64)
        with pytest.raises(InvalidRequest, match="registration code"):
            register(cert_pem(wrong_code).decode())
        not_by_ca = issue_leaf(other, new_key().public_key(), code)
        with pytest.raises(InvalidRequest, match="not signed by the CA"):
            register(cert_pem(not_by_ca).decode())
        leaf = issue_leaf(ca, new_key().public_key(), "just-a-device")
        with pytest.raises(InvalidRequest, match="not a CA"):
            register(cert_pem(issue_leaf(ca, new_key().public_key(), code)).decode(), cert_pem(leaf).decode())
        with pytest.raises(InvalidRequest, match="PEM"):
            register("-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n")
        with pytest.raises(InvalidRequest, match="thingNameFrom"):
            api.call("POST", "/cacertificate", json={
                "caCertificate": pem, "verificationCertificate": cert_pem(issue_leaf(ca, new_key().public_key(),
                                                                                     code)).decode(),
                "registrationConfig": {"thingNameFrom": "favouriteColour"}})
        with pytest.raises(NotFound, match="policy 'no-such-policy' does not exist"):
            api.call("POST", "/cacertificate", json={
                "caCertificate": pem, "verificationCertificate": cert_pem(issue_leaf(ca, new_key().public_key(),
                                                                                     code)).decode(),
                "registrationConfig": {"policyName": "no-such-policy"}})
        listed = [c["certificateId"] for c in api.call("GET", "/cacertificates")["certificates"]]
        assert certificate_id(ca.cert) not in listed  # nothing registered by the refused requests
    for region in REGIONS:  # derived from the fleet secret: the same code in every region
        with jfleet.admin(region) as api:
            assert api.call("GET", "/registrationcode")["registrationCode"] == code
    ca_id = register_ca(jfleet, ca, B, active=False)
    with jfleet.admin(B) as api, pytest.raises(Conflict, match="already registered"):
        api.call("POST", "/cacertificate", json={
            "caCertificate": pem, "verificationCertificate": cert_pem(issue_leaf(ca, new_key().public_key(),
                                                                                 code)).decode()})
    on_every_region(jfleet, f"/cacertificate/{ca_id}")
    with jfleet.admin(C) as api:
        described = api.call("GET", f"/cacertificate/{ca_id}")
        assert described["certificateDescription"]["status"] == "INACTIVE"
        assert described["registrationConfig"]["policyName"] == DEFAULT_POLICY_NAME
        with pytest.raises(InvalidRequest):
            api.call("PUT", f"/cacertificate/{ca_id}", params={"newStatus": "SOMETIMES"})
        api.call("DELETE", f"/cacertificate/{ca_id}")  # INACTIVE, nothing issued: AWS deletes it
        with pytest.raises(NotFound):
            api.call("GET", f"/cacertificate/{ca_id}")


# -- first connect anywhere -----------------------------------------------------------------------

def test_a_paho_device_registers_in_b_the_hook_runs_in_the_owner_and_it_then_connects_everywhere(
        jfleet: Fleet, customer_ca: tuple[Authority, str]) -> None:
    ca, ca_id = customer_ca
    device = CustomerDevice(jfleet, ca, jfleet.new_name("ok-paho"), guard_owner=A)
    with Events(jfleet, B) as events:
        assert not device.connects(B), "AWS refuses a JITR device's first connect"
        event = wait_for(lambda: events.registered(device.cert_id), 15, "the registered event in B")[0]
    assert event["topic"] == registered_topic(ca_id)
    assert event["caCertificateId"] == ca_id
    assert event["certificateStatus"] == "PENDING_ACTIVATION"
    assert event["awsAccountId"] == jfleet.data.config().account
    assert {"timestamp", "certificateRegistrationTimestamp"} <= set(event)
    wait_for(lambda: device.connects(B), 20, "the device connecting in B after activation")
    wait_for(lambda: device.connects(C), 20, "the device connecting in C")
    assert device.connects(A)
    calls = hook_calls(jfleet, device.cert_id)
    assert [(c["region"], c["validatingRegion"]) for c in calls] == [(B, A)]
    with jfleet.admin(C) as api:
        thing = api.call("GET", f"/things/{device.name}")
        assert thing["attributes"]["geofleet:homeRegion"] == B
        assert thing["attributes"]["source"] == "jitr-test"
        assert api.call("GET", f"/things/{device.name}/principals")["principals"] == [device.cert_id]
        listed = api.call("GET", f"/certificates-by-ca/{ca_id}")["certificates"]
        assert device.cert_id in [c["certificateId"] for c in listed]
    with jfleet.admin(A) as api:  # revoking a JITR certificate works as for any certificate
        api.call("POST", f"/certificates/{device.cert_id}/revoke")
    wait_for(lambda: device.status(B) == "REVOKED", 10, "the revocation in B")
    assert not device.connects(B)


def aws_sdk_connects(fleet: Fleet, device: CustomerDevice, region: str) -> bool:
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=fleet.port(region), cert_filepath=str(device.cert),
        pri_key_filepath=str(device.key), ca_filepath=str(fleet.data.root_ca), client_id=device.name,
        clean_session=True, keep_alive_secs=30)
    try:
        connection.connect().result(timeout=10)
    except Exception:  # awscrt raises its own errors for a refused or closed connection
        return False
    connection.disconnect().result(timeout=10)
    return True


def test_an_aws_iot_device_sdk_device_registers_just_in_time(jfleet: Fleet, customer_ca: tuple[Authority, str]
                                                              ) -> None:
    ca, _ = customer_ca
    device = CustomerDevice(jfleet, ca, jfleet.new_name("ok-awssdk"), guard_owner=C)
    assert not aws_sdk_connects(jfleet, device, B)
    wait_for(lambda: aws_sdk_connects(jfleet, device, B), 30, "the SDK device connecting in B", interval=0.2)
    assert aws_sdk_connects(jfleet, device, A)
    assert [c["validatingRegion"] for c in hook_calls(jfleet, device.cert_id)] == [C]


def test_concurrent_first_connects_in_two_regions_give_one_registration(
        jfleet: Fleet, customer_ca: tuple[Authority, str]) -> None:
    ca, _ = customer_ca
    device = CustomerDevice(jfleet, ca, jfleet.new_name("ok-race"))
    with Events(jfleet, B) as in_b, Events(jfleet, C) as in_c:
        barrier = threading.Barrier(2)

        def first_connect(region: str) -> None:
            barrier.wait()
            device.connects(region)

        threads = [threading.Thread(target=first_connect, args=(r,)) for r in (B, C)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        wait_for(lambda: device.connects(B), 20, "the device connecting after activation")
        wait_for(lambda: in_b.registered(device.cert_id) or in_c.registered(device.cert_id), 10, "the event")
        assert len(in_b.registered(device.cert_id)) + len(in_c.registered(device.cert_id)) == 1
    assert len(hook_calls(jfleet, device.cert_id)) == 1
    with jfleet.admin(A) as api:
        assert api.call("GET", f"/things/{device.name}/principals")["principals"] == [device.cert_id]


def test_a_refused_device_stays_pending_and_registers_only_once(jfleet: Fleet,
                                                                customer_ca: tuple[Authority, str]) -> None:
    ca, _ = customer_ca
    device = CustomerDevice(jfleet, ca, jfleet.new_name("no-stranger"))
    assert not device.connects(B)
    wait_for(lambda: hook_calls(jfleet, device.cert_id), 15, "the hook's refusal")
    assert not device.connects(C)  # PENDING_ACTIVATION: refused, no second registration
    for region in REGIONS:
        wait_for(lambda region=region: device.status(region) == "PENDING_ACTIVATION", 10,  # type: ignore[misc]
                 f"the pending certificate in {region}")
    with jfleet.admin(A) as api, pytest.raises(NotFound):
        api.call("GET", f"/things/{device.name}")


def test_a_registered_intermediate_ca_anchors_its_devices(jfleet: Fleet) -> None:
    root = create_root("acme", "offline root")
    intermediate = create_intermediate(root, "factory-7")
    register_ca(jfleet, intermediate, C)  # the root itself is never registered
    device = CustomerDevice(jfleet, intermediate, jfleet.new_name("ok-factory"))
    # each attempt is refused until the CA has reached A, the certificate is registered there
    # just in time and the hook has activated it
    wait_for(lambda: device.connects(A), 30, "the device of the intermediate connecting", interval=0.1)
    wait_for(lambda: device.status(B) == "ACTIVE", 10, "the activation in B")


def test_a_certificate_of_an_unregistered_ca_is_refused_by_tls(jfleet: Fleet) -> None:
    stranger = create_root("mallory", "device CA")
    device = CustomerDevice(jfleet, stranger, jfleet.new_name("ok-stranger"))
    for region in REGIONS:
        assert not device.connects(region)
    assert device.status(A) is None


def test_a_ca_without_auto_registration_registers_nothing(jfleet: Fleet) -> None:
    ca = create_root("acme", "manual CA")
    ca_id = register_ca(jfleet, ca, auto=False)
    on_every_region(jfleet, f"/cacertificate/{ca_id}")
    device = CustomerDevice(jfleet, ca, jfleet.new_name("ok-manual"))
    assert not device.connects(B)
    assert not device.connects(A)
    assert device.status(A) is None
    assert device.status(B) is None
    with jfleet.admin(B) as api:
        assert api.call("GET", f"/certificates-by-ca/{ca_id}")["certificates"] == []


def test_a_ca_set_inactive_refuses_its_devices_everywhere_and_cuts_their_sessions(jfleet: Fleet) -> None:
    ca = create_root("acme", "revocable CA")
    ca_id = register_ca(jfleet, ca)
    on_every_region(jfleet, f"/cacertificate/{ca_id}")
    devices = [CustomerDevice(jfleet, ca, jfleet.new_name("ok-cut")) for _ in range(2)]
    for device in devices:
        device.connects(B)
        wait_for(lambda device=device: device.connects(B), 20, "activation")  # type: ignore[misc]
    live = [devices[0].paho(B).connect(), devices[1].paho(C).connect()]
    try:
        with jfleet.admin(A) as api:
            api.call("PUT", f"/cacertificate/{ca_id}", params={"newStatus": "INACTIVE"})
        for session in live:
            wait_for(lambda session=session: session.disconnects, 10, "the session cut")  # type: ignore[misc]
        for region in REGIONS:
            assert not devices[0].connects(region)
        with jfleet.admin(C) as api:
            api.call("PUT", f"/cacertificate/{ca_id}", params={"newStatus": "ACTIVE"})
        wait_for(lambda: devices[0].connects(A), 10, "the CA active again in A")
        with jfleet.admin(B) as api:
            api.call("PUT", f"/cacertificate/{ca_id}", params={"newStatus": "REVOKED"})
            with pytest.raises(Conflict, match="REVOKED"):
                api.call("PUT", f"/cacertificate/{ca_id}", params={"newStatus": "ACTIVE"})
            with pytest.raises(Conflict):
                api.call("DELETE", f"/cacertificate/{ca_id}")
        for region in REGIONS:
            wait_for(lambda region=region: not devices[1].connects(region), 10,  # type: ignore[misc]
                     f"the revoked CA's device refused in {region}")
    finally:
        for session in live:
            session.close()


def test_the_cli_registers_and_lists_a_ca(jfleet: Fleet, tmp_path: Path) -> None:
    from tests.helpers import geofleet

    root = str(jfleet.data.root)
    code = geofleet("ca", "registration-code", "--data-dir", root, "--region", C).stdout.strip()
    ca = create_root("acme", "cli CA")
    write_public(tmp_path / "ca.pem", cert_pem(ca.cert))
    write_public(tmp_path / "verify.pem", cert_pem(issue_leaf(ca, new_key().public_key(), code)))
    write_public(tmp_path / "bad.pem", cert_pem(issue_leaf(ca, new_key().public_key(), "nope")))
    refused = geofleet("ca", "register", str(tmp_path / "ca.pem"), "--verification-cert", str(tmp_path / "bad.pem"),
                       "--data-dir", root, "--region", C, check=False)
    assert refused.returncode == 2
    assert "registration code" in refused.stderr
    out = geofleet("ca", "register", str(tmp_path / "ca.pem"), "--verification-cert", str(tmp_path / "verify.pem"),
                   "--set-active", "--auto-registration", "--data-dir", root, "--region", C, "--json").stdout
    ca_id = json.loads(out)["certificateId"]
    assert ca_id in geofleet("ca", "list", "--data-dir", root, "--region", C).stdout
    described = geofleet("ca", "update", ca_id, "--auto-registration", "DISABLE", "--data-dir", root,
                         "--region", C).stdout
    assert "DISABLE" in described
    missing = geofleet("ca", "register", str(tmp_path / "nope.pem"), "--verification-cert",
                       str(tmp_path / "verify.pem"), "--data-dir", root, "--region", C, check=False)
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_the_owner_region_runs_the_hook_again_after_a_crash(jfleet: Fleet,
                                                            customer_ca: tuple[Authority, str]) -> None:
    """The hook cannot decide (``gate-*`` devices: the test hook raises until a flag file
    exists); the owner region is SIGKILLed and restarted: its start-up runs the hook again for
    the pending certificate it owns, well before its periodic retry (30 s) would."""
    ca, _ = customer_ca
    device = CustomerDevice(jfleet, ca, jfleet.new_name("gate-crash"), guard_owner=A)
    assert not device.connects(B)
    wait_for(lambda: hook_calls(jfleet, device.cert_id), 15, "the hook's first (undecided) call in A")
    (jfleet.data.root.parent / "hook.jsonl.open").touch()
    jfleet.send_signal(A, signal.SIGKILL)
    jfleet.restart(A)
    wait_for(lambda: device.status(A) == "ACTIVE", 20, "the activation by A's start-up")
    assert [c["validatingRegion"] for c in hook_calls(jfleet, device.cert_id)] == [A, A]
    wait_for(lambda: device.connects(B), 10, "the device connecting in B")
