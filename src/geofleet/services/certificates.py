"""Device certificates: signed from a CSR by this region's CA or registered from another
region's, their status (REVOKED is final) and deletion."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from cryptography import x509

from geofleet.domain.errors import Conflict
from geofleet.domain.records import CertificateStatus, Kind
from geofleet.domain.registry_rules import arn, check_certificate_deletable, check_status_change
from geofleet.pki.ca import Authority, cert_pem, certificate_id, sign_csr
from geofleet.services.ledger import Ledger


class Certificates:
    def __init__(self, ledger: Ledger, account: str, authority: Authority) -> None:
        self._ledger = ledger
        self._authority = authority
        self._arn = partial(arn, ledger.region, account, "cert")

    def create_from_csr(self, csr: x509.CertificateSigningRequest, set_active: bool = False,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Sign a CSR with this region's CA; the private key stays wherever the CSR was made."""
        status = CertificateStatus.ACTIVE if set_active else CertificateStatus.INACTIVE
        return self.register(sign_csr(self._authority, csr), status, extra)

    def register(self, cert: x509.Certificate, status: CertificateStatus,
                 extra: dict[str, Any] | None = None, ref: str = "") -> dict[str, Any]:
        """Register a certificate: one this region just signed, or one issued by the fleet's PKI
        elsewhere (another region's CA). The caller parsed it where it arrived; ``extra`` fields
        go into its record (fleet provisioning keeps its ownership token there); ``ref`` is the
        customer CA of a certificate registered just in time."""
        cert_id = certificate_id(cert)
        if self._ledger.live(Kind.CERTIFICATE, cert_id) is not None:
            raise Conflict(f"certificate {cert_id} is already registered")
        body = {"certificateId": cert_id, "certificatePem": cert_pem(cert).decode(), "status": status.value,
                "issuer": cert.issuer.rfc4514_string(), "creationDate": int(time.time()), **(extra or {})}
        self._ledger.put(Kind.CERTIFICATE, cert_id, body, ref=ref)
        return {"certificateId": cert_id, "certificateArn": self._arn(cert_id),
                "certificatePem": body["certificatePem"]}

    def describe(self, cert_id: str) -> dict[str, Any]:
        body = self._ledger.require(Kind.CERTIFICATE, cert_id, "certificate").body or {}
        return {**body, "certificateArn": self._arn(cert_id)}

    def all(self, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every certificate (without its PEM); with ``limit``, a keyset page by certificate id."""
        return [{k: v for k, v in (r.body or {}).items() if k != "certificatePem"}
                for r in self._ledger.listed(Kind.CERTIFICATE, after, limit)]

    def admission(self, cert_id: str) -> tuple[CertificateStatus | None, str]:
        """What admission needs in one read: the status (None: not registered) and the customer
        CA the certificate was registered under just in time ("" for the fleet's own)."""
        record = self._ledger.live(Kind.CERTIFICATE, cert_id)
        if record is None:
            return None, ""
        return CertificateStatus((record.body or {})["status"]), record.ref

    def status(self, cert_id: str) -> CertificateStatus | None:
        record = self._ledger.live(Kind.CERTIFICATE, cert_id)
        return None if record is None else CertificateStatus((record.body or {})["status"])

    def update(self, cert_id: str, status: CertificateStatus) -> dict[str, Any]:
        record = self._ledger.require(Kind.CERTIFICATE, cert_id, "certificate")
        body = dict(record.body or {})
        check_status_change(cert_id, body["status"], status)
        if body["status"] != status:
            body["status"] = status.value
            self._ledger.put(Kind.CERTIFICATE, cert_id, body, ref=record.ref)
        return self.describe(cert_id)

    def delete(self, cert_id: str) -> None:
        record = self._ledger.require(Kind.CERTIFICATE, cert_id, "certificate")
        attached = bool(self._ledger.records(Kind.POLICY_ATTACHMENT, prefix=f"{cert_id}|")
                        or self._ledger.records(Kind.THING_PRINCIPAL, ref=cert_id))
        check_certificate_deletable(cert_id, (record.body or {}).get("status"), attached)
        self._ledger.delete(record)

    def claim_certificates_of(self, group: str) -> list[str]:
        """The claim certificates issued for enrollment ``group`` (a scan: revocation is rare)."""
        return [r.key for r in self._ledger.records(Kind.CERTIFICATE) if (r.body or {}).get("claimGroup") == group]
