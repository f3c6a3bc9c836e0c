"""Enrollment groups and individual enrollments: the secrets devices prove to be provisioned,
and the claim certificates of AWS-style fleet provisioning issued for a group."""

from __future__ import annotations

import secrets
from typing import Any

from cryptography.x509 import CertificateSigningRequest

from geofleet.domain.enrollment import encode_key
from geofleet.domain.errors import Conflict
from geofleet.domain.names import check_thing_name, check_type_name
from geofleet.domain.policy import CLAIM_POLICY_NAME
from geofleet.domain.records import CertificateStatus, Kind
from geofleet.domain.registry_rules import check_attributes
from geofleet.services.certificates import Certificates
from geofleet.services.ledger import Ledger
from geofleet.services.policies import Policies
from geofleet.services.thing_types import ThingTypes


class Enrollments:
    def __init__(self, ledger: Ledger, certificates: Certificates, policies: Policies, types: ThingTypes) -> None:
        self._ledger = ledger
        self._certificates = certificates
        self._policies = policies
        self._types = types

    def create(self, name: str, *, policy: str, thing_type: str | None = None,
               attributes: dict[str, str] | None = None, allowed_regions: list[str] | None = None,
               reprovision: bool = False, individual: bool = False, require_csr: bool = False) -> dict[str, Any]:
        """A new group (or, with ``individual``, an allow-list entry whose name is the device id)
        with a fresh secret key; the answer is the only time the key is shown. ``require_csr``:
        its devices must bring their own key (fleet provisioning's CreateKeysAndCertificate, where
        the region makes the key, is refused)."""
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        (check_thing_name if individual else check_type_name)(name)
        if self._ledger.live(kind, name) is not None:
            raise Conflict(f"{'enrollment' if individual else 'enrollment group'} {name!r} already exists")
        self._ledger.require(Kind.POLICY, policy, "policy")
        if thing_type is not None:
            self._types.check_usable(thing_type)
        body = {"name": name, "key": encode_key(secrets.token_bytes(32)), "policyName": policy,
                "thingTypeName": thing_type, "attributes": check_attributes(attributes or {}),
                "allowedRegions": allowed_regions, "reprovision": reprovision, "requireCsr": require_csr,
                "revoked": False}
        self._ledger.put(kind, name, body)
        return body

    def get(self, name: str, individual: bool = False) -> dict[str, Any]:
        """The group (or individual enrollment) with its key, for verifying proofs; the API never
        returns keys after creation."""
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        return dict(self._ledger.require(kind, name, "enrollment" if individual else "enrollment group").body or {})

    def all(self, individual: bool = False) -> list[dict[str, Any]]:
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        return [{k: v for k, v in (r.body or {}).items() if k != "key"} for r in self._ledger.records(kind)]

    def revoke(self, name: str, individual: bool = False) -> dict[str, Any]:
        """Revoke a group and, in the same transaction, every claim certificate issued for it:
        REVOKED replicates and wins over any other status, and every region's gate cuts the
        live sessions of a certificate that stops being ACTIVE."""
        body = self.get(name, individual)
        body["revoked"] = True
        with self._ledger.atomic():
            self._ledger.put(Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP, name, body)
            if not individual:
                for cert_id in self._certificates.claim_certificates_of(name):
                    self._certificates.update(cert_id, CertificateStatus.REVOKED)
        return {k: v for k, v in body.items() if k != "key"}

    def create_claim_certificate(self, group: str, csr: CertificateSigningRequest) -> dict[str, Any]:
        """A claim certificate for AWS-style fleet provisioning over MQTT: it may only ask for a
        device certificate on behalf of ``group`` (the claim policy allows nothing else)."""
        if self.get(group).get("revoked"):
            raise Conflict(f"enrollment group {group!r} is revoked")
        cert = self._certificates.create_from_csr(csr, set_active=True, extra={"claimGroup": group})
        self._policies.attach(CLAIM_POLICY_NAME, cert["certificateId"])
        return cert
