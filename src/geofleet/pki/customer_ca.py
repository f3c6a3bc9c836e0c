"""Customer CAs for just-in-time registration: is a certificate a usable CA, does a
verification certificate prove possession of its key (AWS RegisterCACertificate's checks), and
which registered CA issued a device certificate.

Each check raises ``InvalidRequest`` with the reason, which the admin API returns as a 400.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from geofleet.domain.errors import InvalidRequest


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def check_valid_now(cert: x509.Certificate, what: str, now: dt.datetime | None = None) -> None:
    now = now or _now()
    if now < cert.not_valid_before_utc:
        raise InvalidRequest(f"the {what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise InvalidRequest(f"the {what} expired on {cert.not_valid_after_utc.isoformat()}")


def check_ca_certificate(cert: x509.Certificate, now: dt.datetime | None = None) -> None:
    """A CA certificate AWS would register: basicConstraints CA=true, valid now."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise InvalidRequest("the CA certificate has no basicConstraints extension: it is not a CA") from None
    if not constraints.ca:
        raise InvalidRequest("the CA certificate's basicConstraints say CA=false: it is not a CA")
    check_valid_now(cert, "CA certificate", now)


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` directly issued ``cert``: issuer name matches and the signature verifies."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_proof_of_possession(ca: x509.Certificate, verification: x509.Certificate, code: str,
                              now: dt.datetime | None = None) -> None:
    """AWS's proof of possession: the verification certificate's subject CN is this fleet's
    registration code, and it was signed with the CA's private key (so whoever registers the CA
    holds that key, and the code ties the proof to this fleet: it cannot be replayed to another)."""
    if common_name(verification) != code:
        raise InvalidRequest("the verification certificate's subject CN must be this fleet's registration code "
                             "(geofleet ca registration-code)")
    if not issued_by(verification, ca):
        raise InvalidRequest("the verification certificate was not signed by the CA certificate's key "
                             "(or its issuer is not the CA's subject): no proof of possession")
    check_valid_now(verification, "verification certificate", now)
