"""Fleet provisioning by claim certificate, hardened (an attacker holding a claim certificate,
which ships in every factory image): over real MQTT with paho against a real two-region fleet."""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from geofleet.domain.errors import GeofleetError, NotFound
from geofleet.domain.policy import CLAIM_POLICY_NAME, claim_client_id, claim_policy
from geofleet.pki.ca import key_pem, make_csr, new_key
from tests.conftest import Fleet, restarted_region
from tests.helpers import Device, wait_for

EU, US = "eu-west-1", "us-east-1"
GROUP = "factory"
TTL_S = 15
MAX_PENDING = 3
CREATE = "$aws/certificates/create-from-csr/json"
PROVISION = f"$aws/provisioning-templates/{GROUP}/provision/json"
ANSWERS = [f"{t}/{o}" for t in (CREATE, PROVISION) for o in ("accepted", "rejected")]


@pytest.fixture(scope="module")
def cfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet.start(tmp_path_factory.mktemp("claim") / "fleet", (EU, US),
                        settings={"claim_token_ttl_s": TTL_S, "claim_requests_per_minute": 20,
                                  "claim_max_pending": MAX_PENDING})
    assert isinstance(fleet, Fleet)
    with fleet.admin(EU) as api:
        api.call("POST", f"/enrollment-groups/{GROUP}", json={})
    wait_for(lambda: all(_has_group(fleet, r, GROUP) for r in (EU, US)), 15, "the enrollment group everywhere")
    yield fleet
    fleet.stop()


def _has_group(fleet: Fleet, region: str, name: str) -> bool:
    with fleet.admin(region) as api:
        return any(g["name"] == name for g in api.call("GET", "/enrollment-groups")["enrollmentGroups"])


@dataclass
class Claim:
    """A claim certificate on disk, as a factory image holds it."""

    fleet: Fleet
    certificate_id: str
    cert: Path
    key: Path

    def device(self, region: str = EU, suffix: str = "", client_id: str | None = None) -> Device:
        return Device(client_id or claim_client_id(self.certificate_id, suffix), self.fleet.port(region),
                      self.fleet.data.root_ca, self.cert, self.key)

    def session(self, region: str = EU, suffix: str = "") -> Device:
        device = self.device(region, suffix).connect()
        assert device.subscribe(*ANSWERS) == [1, 1, 1, 1]
        return device


def new_claim(fleet: Fleet, tmp_path: Path, group: str = GROUP, region: str = EU) -> Claim:
    key = new_key()
    with fleet.admin(region) as api:
        made = api.call("POST", f"/enrollment-groups/{group}/claim-certificate",
                        json={"certificateSigningRequest": make_csr(key, "claim").decode()})
    stem = tmp_path / f"claim-{made['certificateId'][:12]}"
    cert, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
    cert.write_text(made["certificatePem"])
    key_file.write_bytes(key_pem(key))
    claim = Claim(fleet, made["certificateId"], cert, key_file)
    for other in (EU, US):  # usable (certificate and policy attachment) in both regions before the test starts
        wait_for(functools.partial(_claim_usable, fleet, other, claim.certificate_id), 15, f"the claim cert in {other}")
    return claim


def _claim_policy_targets(fleet: Fleet, region: str) -> list[str]:
    with fleet.admin(region) as api:
        return list(api.call("GET", f"/policies/{CLAIM_POLICY_NAME}/targets")["targets"])


def _status(fleet: Fleet, region: str, cert_id: str) -> str | None:
    """The certificate's status in ``region``; None while (or once) the region does not hold it."""
    with fleet.admin(region) as api:
        try:
            return str(api.call("GET", f"/certificates/{cert_id}")["status"])
        except NotFound:
            return None


def _status_is(fleet: Fleet, region: str, cert_id: str, status: str | None) -> bool:
    return _status(fleet, region, cert_id) == status


def _claim_usable(fleet: Fleet, region: str, cert_id: str) -> bool:
    """The claim certificate is ACTIVE in ``region`` and its policy attached there."""
    return _status(fleet, region, cert_id) == "ACTIVE" and cert_id in _claim_policy_targets(fleet, region)


def create(session: Device, common_name: str) -> Any:
    """CreateCertificateFromCsr with a fresh key; ``common_name`` "" makes a CSR with an empty subject."""
    key = new_key()
    if common_name:
        csr = make_csr(key, common_name)
    else:
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256()) \
            .public_bytes(serialization.Encoding.PEM)
    return session.request(CREATE, {"certificateSigningRequest": csr.decode()})


def provision(session: Device, token: str, thing: str) -> Any:
    return session.request(PROVISION, {"certificateOwnershipToken": token, "parameters": {"SerialNumber": thing}})


def test_a_claim_session_cannot_take_a_device_client_id(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    name = cfleet.create_device(region=EU)
    cfleet.devices_dir.joinpath("root-ca.pem").write_bytes(cfleet.data.root_ca.read_bytes())
    device = cfleet.device(name, EU)
    wait_for(lambda: device.try_connect(), 15, f"{name} admitted")
    device.client.loop_start()
    try:
        assert not claim.device(client_id=name).try_connect(), "a claim certificate may not use a device's client id"
        other = new_claim(cfleet, tmp_path)
        assert not claim.device(client_id=claim_client_id(other.certificate_id)).try_connect(), \
            "nor another claim certificate's namespace"
        assert not claim.device(client_id="claim").try_connect()
        assert device.subscribe(f"dt/{name}/x") == [1], "the device was not kicked"
        assert not device.disconnects, "the device was not kicked"
        assert claim.device(suffix="line-1").try_connect(), "its own namespace works (one suffix per factory line)"
        assert claim.device().try_connect()
        assert device.subscribe(f"dt/{name}/y") == [1]
        assert not device.disconnects
    finally:
        device.close()


def test_claim_sessions_leave_no_presence_records(cfleet: Fleet, tmp_path: Path) -> None:
    """One replicated presence record per client id would let a claim certificate, with a new
    suffix per connection, fill every region's store."""
    claim = new_claim(cfleet, tmp_path)
    sessions = [claim.device(suffix=f"s{i}").connect() for i in range(3)]
    name = cfleet.create_device(region=EU)
    cfleet.devices_dir.joinpath("root-ca.pem").write_bytes(cfleet.data.root_ca.read_bytes())
    device = cfleet.device(name, EU).connect()  # after the claim sessions: its record proves theirs were due

    def listed() -> list[str]:
        with cfleet.admin(EU) as api:
            return [s["device"] for s in api.call("GET", "/v1/presence")["devices"]]

    wait_for(lambda: name in listed(), 15, f"{name} in the presence directory")
    assert not [d for d in listed() if d.startswith("claim.")]
    for session in (*sessions, device):
        session.close()


def test_a_claim_session_can_neither_forge_answers_nor_hear_requests(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    victim = claim.session(suffix="victim")
    attacker = claim.device(suffix="attacker").connect()
    forged = {"certificateId": "x", "certificatePem": "forged", "certificateOwnershipToken": "forged"}

    def forged_arrived() -> bool:
        return any(m.topic.startswith("$aws/") and b"forged" in m.payload for m in victim.messages)

    attacker.publish(f"{CREATE}/accepted", forged)
    wait_for(lambda: attacker.disconnects or forged_arrived(), 10, "the forged answer delivered or refused")
    assert not forged_arrived(), "a claim session forged an answer to another claim session"
    wait_for(lambda: attacker.disconnects, 10, "the broker to cut a forbidden publish")
    created = create(victim, "")
    assert created.topic.endswith("/accepted"), created.payload
    assert [m for m in victim.messages if m.topic.startswith("$aws/")] == [created], \
        "only the region's own answer reached the victim"
    listener = claim.device(suffix="listener").connect()
    assert listener.subscribe(f"$aws/provisioning-templates/{GROUP}/provision/json",
                              "$aws/certificates/create-from-csr/json") == [0x80, 0x80], \
        "requests carry ownership tokens: nobody may listen to them"
    bystander = claim.session(suffix="bystander")
    token = created.json()["certificateOwnershipToken"]
    assert provision(victim, token, cfleet.new_name("fp")).topic.endswith("/accepted")
    assert not [m for m in bystander.messages if m.topic.startswith("$aws/")], "answers go to the requester only"
    for session in (victim, listener, bystander):
        session.close()


def test_an_ownership_token_is_good_for_one_thing_in_every_region(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    eu, us = claim.session(EU, "eu"), claim.session(US, "us")
    token = create(eu, "").json()["certificateOwnershipToken"]
    first, second = cfleet.new_name("once"), cfleet.new_name("twice")
    accepted = provision(eu, token, first)
    assert accepted.topic.endswith("/accepted"), accepted.payload
    again = provision(eu, token, second)
    assert again.topic.endswith("/rejected"), again.payload
    assert again.json()["errorCode"] == "Unauthorized", again.payload
    assert "already used" in again.json()["errorMessage"]
    elsewhere = provision(us, token, second)
    assert elsewhere.topic.endswith("/rejected"), "a token used in one region cannot be used in another"
    assert elsewhere.json()["errorCode"] == "Unauthorized", "a token used in one region cannot be used in another"
    retry = provision(us, token, first)
    assert retry.topic.endswith("/accepted"), "the same request again (a lost answer) gets the same answer"
    assert retry.json() == accepted.json(), "the same request again (a lost answer) gets the same answer"
    fresh = create(eu, "").json()["certificateOwnershipToken"]
    moved = provision(us, fresh, cfleet.new_name("moved"))
    assert moved.topic.endswith("/accepted"), "a token made in one region is good in another"
    for region in (EU, US):
        with cfleet.admin(region) as api:
            assert not any(t["thingName"] == second for t in api.call("GET", "/things")["things"])
    eu.close()
    us.close()


def test_a_token_raced_in_two_regions_provisions_one_thing(cfleet: Fleet, tmp_path: Path) -> None:
    """Both regions get the token at once, before either can have replicated the other's use:
    the guard in the token's owner region lets exactly one of them have it."""
    claim = new_claim(cfleet, tmp_path)
    eu, us = claim.session(EU, "eu"), claim.session(US, "us")
    for _ in range(MAX_PENDING):
        token = create(eu, "").json()["certificateOwnershipToken"]
        starts = len(eu.messages), len(us.messages)
        sent = [session.client.publish(PROVISION, json.dumps({  # not waiting for the PUBACK: both in flight
            "certificateOwnershipToken": token, "parameters": {"SerialNumber": cfleet.new_name("race")}}), 1)
            for session in (eu, us)]
        for message in sent:
            message.wait_for_publish(15)

        def answer(session: Device, start: int) -> Any:
            return next((m for m in session.messages[start:] if m.topic.startswith(PROVISION)), None)

        answers = [wait_for(functools.partial(answer, session, start), 15, "an answer")
                   for session, start in zip((eu, us), starts, strict=True)]
        outcomes = sorted(a.topic.rsplit("/", 1)[1] for a in answers)
        assert outcomes == ["accepted", "rejected"], [a.payload for a in answers]
        assert next(a for a in answers if a.topic.endswith("/rejected")).json()["errorCode"] == "Unauthorized"
    eu.close()
    us.close()


def test_the_csr_common_name_must_be_empty_or_the_thing_name(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    session = claim.session()
    bad = create(session, "not a thing name!")
    assert bad.topic.endswith("/rejected"), bad.payload
    assert bad.json()["errorCode"] == "InvalidParameters", bad.payload
    assert "subject CN" in bad.json()["errorMessage"]
    victim = cfleet.new_name("victim")
    made = create(session, victim).json()
    squatter = provision(session, made["certificateOwnershipToken"], cfleet.new_name("other"))
    assert squatter.topic.endswith("/rejected")
    assert squatter.json()["errorCode"] == "InvalidParameters"
    assert provision(session, made["certificateOwnershipToken"], victim).topic.endswith("/accepted")
    session.close()


def test_an_unused_token_expires_and_its_pending_certificate_is_collected(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    session = claim.session()
    made = create(session, "").json()
    cert_id = made["certificateId"]
    assert _status(cfleet, EU, cert_id) == "PENDING_ACTIVATION"
    for region in (EU, US):
        wait_for(functools.partial(_status_is, cfleet, region, cert_id, None), TTL_S + 30,
                 f"the pending certificate gone in {region}")
    late = provision(session, made["certificateOwnershipToken"], cfleet.new_name("late"))
    assert late.topic.endswith("/rejected"), late.payload
    assert late.json()["errorCode"] == "Unauthorized", late.payload
    session.close()


def test_revoking_the_group_revokes_its_claim_certificates_and_cuts_their_sessions(
        cfleet: Fleet, tmp_path: Path) -> None:
    group = cfleet.new_name("line")
    with cfleet.admin(US) as api:
        api.call("POST", f"/enrollment-groups/{group}", json={})
    wait_for(lambda: all(_has_group(cfleet, r, group) for r in (EU, US)), 15, "the group everywhere")
    claim = new_claim(cfleet, tmp_path, group)
    sessions = {region: claim.session(region, region) for region in (EU, US)}
    with cfleet.admin(US) as api:
        api.call("POST", f"/enrollment-groups/{group}/revoke")
    for region, session in sessions.items():
        wait_for(functools.partial(getattr, session, "disconnects"), 15, f"the claim session in {region} cut")
        wait_for(functools.partial(_status_is, cfleet, region, claim.certificate_id, "REVOKED"), 15,
                 f"REVOKED in {region}")
        assert not claim.device(region, "again").try_connect()


def test_a_claim_certificate_is_rate_limited(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    session = claim.session()
    for _ in range(30):
        session.publish(CREATE, {"certificateSigningRequest": "not a CSR"})
    answers = wait_for(lambda: [m for m in session.messages if m.topic.startswith(CREATE)] if
                       len([m for m in session.messages if m.topic.startswith(CREATE)]) >= 30 else None,
                       20, "30 answers")
    throttled = [json.loads(m.payload) for m in answers if json.loads(m.payload)["errorCode"] == "Throttling"]
    assert 5 <= len(throttled) <= 10, [json.loads(m.payload) for m in answers]
    assert all(t["statusCode"] == 429 and t["errorMessage"].startswith("Rate exceeded") for t in throttled)
    other = new_claim(cfleet, tmp_path)
    assert create(other.session(), "").topic.endswith("/accepted"), "the limit is per claim certificate"
    session.close()


def test_a_claim_certificate_has_few_certificates_awaiting_register_thing(cfleet: Fleet, tmp_path: Path) -> None:
    claim = new_claim(cfleet, tmp_path)
    session = claim.session()
    made = [create(session, "") for _ in range(MAX_PENDING)]
    assert all(m.topic.endswith("/accepted") for m in made), [m.payload for m in made]
    refused = create(session, "")
    assert refused.topic.endswith("/rejected"), refused.payload
    assert refused.json()["errorCode"] == "Throttling", refused.payload
    assert "await RegisterThing" in refused.json()["errorMessage"]
    token = made[0].json()["certificateOwnershipToken"]
    assert provision(session, token, cfleet.new_name("cap")).topic.endswith("/accepted")
    assert create(session, "").topic.endswith("/accepted"), "a provisioned certificate no longer counts"
    session.close()


OLD_CLAIM_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
     "Resource": ["arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/*",
                  "arn:aws:iot:*:*:topic/$aws/provisioning-templates/*"]},
]}
"""The claim policy geofleet installed before the hardening (any client id)."""


def _claim_policy_in(fleet: Fleet, region: str) -> Any:
    with fleet.admin(region) as api:
        try:
            return json.loads(api.call("GET", f"/policies/{CLAIM_POLICY_NAME}")["policyDocument"])
        except GeofleetError:  # the region is down
            return None


def test_a_restarted_region_replaces_an_older_wider_claim_policy(cfleet: Fleet, tmp_path: Path) -> None:
    """Last in this module: it leaves us-east-1 stopped."""
    claim = new_claim(cfleet, tmp_path)
    with cfleet.admin(US) as api:
        api.call("PUT", f"/policies/{CLAIM_POLICY_NAME}", json={"policyDocument": json.dumps(OLD_CLAIM_POLICY)})
    wait_for(lambda: _claim_policy_in(cfleet, EU) == OLD_CLAIM_POLICY, 15, "the old policy in eu-west-1")
    assert claim.device(EU, client_id="any-device").try_connect(), "the old policy let a claim take any client id"
    os.kill(cfleet.pid(US), signal.SIGKILL)
    wait_for(lambda: _claim_policy_in(cfleet, US) is None, 15, "us-east-1 down")
    with restarted_region(cfleet, US):
        wait_for(lambda: all(_claim_policy_in(cfleet, r) == claim_policy() for r in (US, EU)), 30,
                 "the current claim policy in every region")
        assert not claim.device(EU, client_id="any-device").try_connect()
        assert claim.device(EU).try_connect()
