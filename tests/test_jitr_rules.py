"""The pure parts of just-in-time registration: proof of possession, CA checks, the
registration template, the hook configuration and verdicts, CA records' merge and dependencies."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from geofleet.config import FleetConfig
from geofleet.domain.errors import ConfigError, Conflict, InvalidRequest
from geofleet.domain.hlc import HLC
from geofleet.domain.jitr import (
    CaStatus,
    HookKind,
    ThingNameSource,
    allow_list_verdict,
    check_ca_deletable,
    check_ca_status_change,
    parse_hook,
    parse_template,
    parse_verdict,
    registered_event,
    registration_code,
    thing_name_for,
)
from geofleet.domain.records import Kind, Record, dependencies, supersedes
from geofleet.pki.ca import create_root, issue_leaf, new_key
from geofleet.pki.customer_ca import check_ca_certificate, check_proof_of_possession, issued_by

CA = create_root("acme", "customer CA")
CODE = registration_code(b"fleet secret")


def test_the_registration_code_is_derived_from_the_fleet_secret() -> None:
    assert registration_code(b"fleet secret") == CODE
    assert registration_code(b"another fleet") != CODE
    assert len(CODE) == 64
    assert int(CODE, 16) >= 0


def test_a_verification_certificate_signed_by_the_ca_with_the_code_proves_possession() -> None:
    check_proof_of_possession(CA.cert, issue_leaf(CA, new_key().public_key(), CODE), CODE)


def test_a_wrong_code_is_no_proof() -> None:
    with pytest.raises(InvalidRequest, match="registration code"):
        check_proof_of_possession(CA.cert, issue_leaf(CA, new_key().public_key(), "f" * 64), CODE)


def test_a_verification_certificate_signed_by_another_key_is_no_proof() -> None:
    impostor = create_root("acme", "customer CA")  # same subject name, another key
    with pytest.raises(InvalidRequest, match="not signed by the CA"):
        check_proof_of_possession(CA.cert, issue_leaf(impostor, new_key().public_key(), CODE), CODE)


def test_an_expired_verification_certificate_is_no_proof() -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=4000)
    with pytest.raises(InvalidRequest, match="expired"):
        check_proof_of_possession(CA.cert, issue_leaf(CA, new_key().public_key(), CODE), CODE, now=later)


def test_a_leaf_is_not_a_ca() -> None:
    with pytest.raises(InvalidRequest, match="not a CA"):
        check_ca_certificate(issue_leaf(CA, new_key().public_key(), "device"))
    check_ca_certificate(CA.cert)


def test_a_certificate_without_basic_constraints_is_not_a_ca() -> None:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with pytest.raises(InvalidRequest, match="basicConstraints"):
        check_ca_certificate(cert)


def test_issued_by_checks_name_and_signature() -> None:
    leaf = issue_leaf(CA, new_key().public_key(), "device")
    assert issued_by(leaf, CA.cert)
    assert not issued_by(leaf, create_root("acme", "customer CA").cert)
    assert not issued_by(leaf, create_root("other", "CA").cert)


def test_the_template_names_the_thing_after_the_cn_or_the_serial() -> None:
    template = parse_template({"thingTypeName": "pump", "attributes": {"plant": "3"}}, "default-policy")
    assert template.policy_name == "default-policy"
    assert thing_name_for(template, "pump-7", 255) == "pump-7"
    by_serial = parse_template({"thingNameFrom": "serialNumber", "policyName": "p"}, "d")
    assert by_serial.thing_name_from is ThingNameSource.SERIAL_NUMBER
    assert thing_name_for(by_serial, "ignored", 255) == "ff"
    with pytest.raises(InvalidRequest, match="thing name"):
        thing_name_for(template, "pump 7/#", 1)
    with pytest.raises(InvalidRequest, match="no subject CN"):
        thing_name_for(template, "", 1)


@pytest.mark.parametrize(("raw", "message"), [
    ("a string", "JSON object"),
    ({"policy": "p"}, "unknown field"),
    ({"policyName": "bad name!"}, "policy name"),
    ({"thingTypeName": 3}, "thingTypeName"),
    ({"attributes": ["a"]}, "attributes"),
    ({"attributes": {"a": "b c"}}, "attribute"),
    ({"thingNameFrom": "mac"}, "thingNameFrom"),
])
def test_a_bad_template_is_refused_with_the_reason(raw: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_template(raw, "d")


def test_a_template_round_trips() -> None:
    template = parse_template({"thingTypeName": "pump", "attributes": {"a": "1"}, "policyName": "p"}, "d")
    assert parse_template(template.to_json(), "x") == template


def test_ca_status_rules() -> None:
    check_ca_status_change("c", "ACTIVE", CaStatus.INACTIVE)
    check_ca_status_change("c", "INACTIVE", CaStatus.ACTIVE)
    with pytest.raises(Conflict, match="REVOKED"):
        check_ca_status_change("c", "REVOKED", CaStatus.ACTIVE)
    check_ca_deletable("c", "INACTIVE", 0)
    with pytest.raises(Conflict, match="INACTIVE"):
        check_ca_deletable("c", "ACTIVE", 0)
    with pytest.raises(Conflict, match="device certificate"):
        check_ca_deletable("c", "INACTIVE", 2)


def _ca(status: str, hlc: int, origin: str = "a") -> Record:
    return Record(Kind.CA_CERTIFICATE, "ca", {"status": status}, HLC(hlc, 0), origin)


def test_a_revoked_ca_stays_revoked_whatever_the_clocks() -> None:
    assert supersedes(_ca("REVOKED", 1), _ca("ACTIVE", 5))
    assert not supersedes(_ca("ACTIVE", 9), _ca("REVOKED", 1))
    assert supersedes(_ca("INACTIVE", 2), _ca("ACTIVE", 1))


def test_a_jitr_certificate_depends_on_its_ca() -> None:
    record = Record(Kind.CERTIFICATE, "cert", {"status": "PENDING_ACTIVATION", "caCertificateId": "ca"},
                    HLC(1, 0), "a", "ca")
    assert dependencies(record) == [(Kind.CA_CERTIFICATE, "ca")]
    plain = Record(Kind.CERTIFICATE, "cert", {"status": "ACTIVE"}, HLC(1, 0), "a")
    assert dependencies(plain) == []


def test_the_registered_event_has_aws_fields() -> None:
    event = registered_event("cert", "ca", "123456789012", 1700000000123, 1700000000)
    assert event == {"certificateId": "cert", "caCertificateId": "ca", "timestamp": 1700000000123,
                     "certificateStatus": "PENDING_ACTIVATION", "awsAccountId": "123456789012",
                     "certificateRegistrationTimestamp": "1700000000"}


# -- the hook's configuration (fleet.json "jitr") ---------------------------------------------------

def test_hook_configurations_parse() -> None:
    assert parse_hook(None) is None
    allow = parse_hook({"hook": "allow-list", "allow": ["pump-1", "0a"]})
    assert allow is not None
    assert allow.kind is HookKind.ALLOW_LIST
    assert allow.allow == {"pump-1", "0a"}
    hook = parse_hook({"hook": "webhook", "url": "https://hooks.example.com/jitr", "attempts": 3})
    assert hook is not None
    assert hook.attempts == 3
    assert hook.timeout_s > 0
    python = parse_hook({"hook": "python", "entryPoint": "acme.jitr:decide"})
    assert python is not None
    assert python.entry_point == "acme.jitr:decide"
    enrollment = parse_hook({"hook": "enrollment"})
    assert enrollment is not None
    for config in (allow, hook, python, enrollment):
        assert parse_hook(config.to_json()) == config


@pytest.mark.parametrize(("raw", "message"), [
    ([], "must be an object"),
    ({"hook": "lambda"}, "jitr.hook must be one of"),
    ({"hook": "allow-list"}, "jitr.allow"),
    ({"hook": "allow-list", "allow": ["ok", 3]}, "jitr.allow"),
    ({"hook": "allow-list", "allow": [], "url": "https://x"}, "unknown key"),
    ({"hook": "webhook", "url": "http://plain.example.com"}, "https://"),
    ({"hook": "webhook", "url": "https://x", "attempts": 0}, "attempts"),
    ({"hook": "webhook", "url": "https://x", "timeoutS": "5"}, "timeoutS"),
    ({"hook": "webhook", "url": "https://x", "retryS": 0}, "retryS"),
    ({"hook": "python", "entryPoint": "no_function"}, "module:function"),
])
def test_a_bad_hook_configuration_says_what_to_write(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_hook(raw)


def test_fleet_json_carries_the_jitr_hook() -> None:
    raw = {"fleet": "f", "regions": [{"name": "us-east-1"}], "jitr": {"hook": "allow-list", "allow": ["a"]}}
    config = FleetConfig.from_json(raw)
    assert config.jitr is not None
    assert config.jitr.allow == {"a"}
    assert FleetConfig.from_json(json.loads(json.dumps(config.to_json()))) == config  # as fleet.json is written
    with pytest.raises(ConfigError, match="jitr"):
        FleetConfig.from_json({**raw, "jitr": {"hook": "nope"}})


def test_verdicts() -> None:
    assert allow_list_verdict(frozenset({"pump-1"}), "pump-1", 10).allow
    assert allow_list_verdict(frozenset({"a"}), "pump-2", 10).allow
    assert not allow_list_verdict(frozenset({"pump-1"}), "pump-2", 11).allow
    allowed = parse_verdict({"allow": True, "thingName": "pump-9", "attributes": {"line": "2"}}, "hook")
    assert allowed.allow
    assert allowed.thing_name == "pump-9"
    assert allowed.attributes == {"line": "2"}
    assert not parse_verdict({"allow": False, "reason": "unknown serial"}, "hook").allow
    assert "unknown serial" in parse_verdict({"allow": False, "reason": "unknown serial"}, "hook").reason
    for nonsense in (None, "yes", {"allow": "true"}, {"allow": 1}):
        assert not parse_verdict(nonsense, "hook").allow
    assert not parse_verdict({"allow": True, "thingName": "bad/name"}, "hook").allow
    assert not parse_verdict({"allow": True, "attributes": {"a": 1}}, "hook").allow
