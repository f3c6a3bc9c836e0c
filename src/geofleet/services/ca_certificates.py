"""Customer CA certificates (AWS RegisterCACertificate and friends): registered with a proof of
possession, ACTIVE/INACTIVE/REVOKED, auto-registration on or off, and the template their
just-in-time devices get. Records of kind ``CA_CERTIFICATE``, replicated like any other.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from cryptography import x509

from geofleet.domain.errors import Conflict, InvalidRequest
from geofleet.domain.jitr import (
    AutoRegistration,
    CaStatus,
    check_ca_deletable,
    check_ca_status_change,
    parse_template,
)
from geofleet.domain.records import Kind, Record
from geofleet.domain.registry_rules import arn
from geofleet.pki.ca import cert_pem, certificate_id, load_cert
from geofleet.pki.customer_ca import check_ca_certificate, check_proof_of_possession, issued_by
from geofleet.services.ledger import Ledger

MAX_CA_CERTIFICATES = 1000
"""How many customer CAs a fleet may register (each is tried against an unknown device
certificate's issuer; AWS's own quota is in this range)."""


class CaCertificates:
    def __init__(self, ledger: Ledger, account: str, default_policy: str) -> None:
        self._ledger = ledger
        self._default_policy = default_policy
        self._arn = partial(arn, ledger.region, account, "cacert")
        self._parsed: dict[str, x509.Certificate] = {}
        """caCertificateId -> the parsed CA (records are immutable in their PEM)."""

    def register(self, ca: x509.Certificate, verification: x509.Certificate | None, code: str, *,
                 set_active: bool, allow_auto_registration: bool, registration_config: Any) -> dict[str, Any]:
        """Register a customer CA once its owner proved possession of its key (the verification
        certificate, signed by the CA, names ``code``). InvalidRequest says what is missing."""
        check_ca_certificate(ca)
        if verification is None:
            raise InvalidRequest("a verificationCertificate is required: sign a certificate whose subject CN is "
                                 "the registration code with the CA's key (proof of possession)")
        check_proof_of_possession(ca, verification, code)
        template = parse_template(registration_config, self._default_policy)
        # refused now, with the name, rather than every device of the CA left pending later
        self._ledger.require(Kind.POLICY, template.policy_name, "registrationConfig policy")
        if template.thing_type is not None:
            self._ledger.require(Kind.THING_TYPE, template.thing_type, "registrationConfig thing type")
        ca_id = certificate_id(ca)
        if self._ledger.live(Kind.CA_CERTIFICATE, ca_id) is not None:
            raise Conflict(f"CA certificate {ca_id} is already registered")
        if len(self._ledger.records(Kind.CA_CERTIFICATE)) >= MAX_CA_CERTIFICATES:
            raise Conflict(f"this fleet already has {MAX_CA_CERTIFICATES} CA certificates: delete unused ones")
        body = {
            "certificateId": ca_id,
            "certificatePem": cert_pem(ca).decode(),
            "status": (CaStatus.ACTIVE if set_active else CaStatus.INACTIVE).value,
            "autoRegistrationStatus": (AutoRegistration.ENABLE if allow_auto_registration
                                       else AutoRegistration.DISABLE).value,
            "creationDate": int(time.time()),
            "validity": {"notBefore": int(ca.not_valid_before_utc.timestamp()),
                         "notAfter": int(ca.not_valid_after_utc.timestamp())},
            "registrationConfig": template.to_json(),
        }
        self._ledger.put(Kind.CA_CERTIFICATE, ca_id, body)
        return {"certificateId": ca_id, "certificateArn": self._arn(ca_id)}

    def describe(self, ca_id: str) -> dict[str, Any]:
        """AWS DescribeCACertificate's shape."""
        body = dict(self._ledger.require(Kind.CA_CERTIFICATE, ca_id, "CA certificate").body or {})
        config = body.pop("registrationConfig", {})
        return {"certificateDescription": {**body, "certificateArn": self._arn(ca_id),
                                           "customerVersion": 1,
                                           "certificateMode": "DEFAULT"},
                "registrationConfig": config}

    def all(self) -> list[dict[str, Any]]:
        return [{"certificateId": r.key, "certificateArn": self._arn(r.key), "status": (r.body or {})["status"],
                 "creationDate": (r.body or {}).get("creationDate")}
                for r in self._ledger.records(Kind.CA_CERTIFICATE) if not r.deleted]

    def live(self, ca_id: str) -> Record | None:
        return self._ledger.live(Kind.CA_CERTIFICATE, ca_id)

    def status(self, ca_id: str) -> CaStatus | None:
        record = self.live(ca_id)
        return None if record is None else CaStatus((record.body or {})["status"])

    def update(self, ca_id: str, new_status: CaStatus | None, new_auto: AutoRegistration | None) -> dict[str, Any]:
        """AWS UpdateCACertificate: status and/or auto-registration."""
        body = dict(self._ledger.require(Kind.CA_CERTIFICATE, ca_id, "CA certificate").body or {})
        changed = False
        if new_status is not None and body["status"] != new_status:
            check_ca_status_change(ca_id, body["status"], new_status)
            body["status"], changed = new_status.value, True
        if new_auto is not None and body["autoRegistrationStatus"] != new_auto:
            body["autoRegistrationStatus"], changed = new_auto.value, True
        if changed:
            self._ledger.put(Kind.CA_CERTIFICATE, ca_id, body)
        return self.describe(ca_id)

    def delete(self, ca_id: str) -> None:
        record = self._ledger.require(Kind.CA_CERTIFICATE, ca_id, "CA certificate")
        issued = [r for r in self._ledger.records(Kind.CERTIFICATE, ref=ca_id) if not r.deleted]
        check_ca_deletable(ca_id, (record.body or {}).get("status"), len(issued))
        self._ledger.delete(record)

    def certificates_of(self, ca_id: str) -> list[Record]:
        """The device certificates registered (just in time) under this CA."""
        return [r for r in self._ledger.records(Kind.CERTIFICATE, ref=ca_id) if not r.deleted]

    def pems(self) -> list[str]:
        """Every registered CA's PEM, whatever its status (status is enforced at admission)."""
        return [str((r.body or {})["certificatePem"]) for r in self._ledger.records(Kind.CA_CERTIFICATE)
                if not r.deleted]

    def issuer_of(self, cert: x509.Certificate) -> Record | None:
        """The registered CA that directly issued ``cert`` (issuer name and signature), or None."""
        for record in self._ledger.records(Kind.CA_CERTIFICATE):
            if record.deleted:
                continue
            ca = self.parsed(record)
            if ca.subject == cert.issuer and issued_by(cert, ca):
                return record
        return None

    def parsed(self, record: Record) -> x509.Certificate:
        ca = self._parsed.get(record.key)
        if ca is None:
            ca = self._parsed[record.key] = load_cert(str((record.body or {})["certificatePem"]))
        return ca
