"""Certificate ownership tokens of AWS fleet provisioning (CreateCertificateFromCsr's
``certificateOwnershipToken``), as pure logic.

A token is ``<certificate id>.<secret>``: the certificate id says which record to look in (so
any region can check a token once the certificate's record has replicated there), and only the
SHA-256 of the secret is stored, in that record, with its expiry and the enrollment group and
claim certificate it was issued to. Tokens expire after an hour, as in AWS; being single-use is
not decided here but by the provision-once guard of the certificate id's owner region (see
``provisioning.fleet_mqtt``), because two regions could otherwise each accept one use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from geofleet.domain.errors import InvalidRequest, Unauthorized
from geofleet.domain.names import check_thing_name

TOKEN_TTL_S = 3600
"""AWS: the token from CreateCertificateFromCsr is valid for one hour."""

GUARD_PREFIX = "ownership-token/"
"""Guard keys of tokens; ``/`` never occurs in a thing name, so they never meet a device's guard."""

EXPIRED = "(expired)"
"""What the collector claims a token's guard with, so that no RegisterThing can use it later."""


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    """Given to the device once; never stored."""
    record: dict[str, Any]
    """Kept in the certificate's record under ``ownershipToken``."""


def issue(certificate_id: str, group: str, claim_certificate_id: str, common_name: str, now: float,
          ttl_s: int = TOKEN_TTL_S) -> Issued:
    secret = secrets.token_urlsafe(32)
    return Issued(f"{certificate_id}.{secret}", {
        "sha256": _digest(secret), "expiresAt": now + ttl_s, "group": group,
        "claimCertificateId": claim_certificate_id, "commonName": common_name})


def certificate_of(token: Any) -> str:
    """The certificate id a token names; Unauthorized if it cannot be a token at all."""
    if not isinstance(token, str) or token.count(".") != 1:
        raise Unauthorized("certificateOwnershipToken is unknown or expired: create a certificate first")
    return token.split(".", 1)[0]


def verify(token: str, record: dict[str, Any] | None, group: str, now: float) -> None:
    """Raise Unauthorized unless ``token`` is the live token stored in ``record`` for ``group``."""
    secret = token.split(".", 1)[1]
    if not record or not hmac.compare_digest(_digest(secret), str(record.get("sha256", ""))):
        raise Unauthorized("certificateOwnershipToken is unknown or expired: create a certificate first")
    if float(record.get("expiresAt", 0)) < now:
        raise Unauthorized("certificateOwnershipToken has expired (it is valid for one hour): "
                           "create a new certificate with CreateCertificateFromCsr")
    if record.get("group") != group:
        raise Unauthorized("certificateOwnershipToken was issued for another enrollment group's claim certificate")


def check_common_name(common_name: str) -> None:
    """The rule for a fleet-provisioning CSR's subject CN: empty, or a valid thing name (which the
    thing provisioned with the certificate must then have). A certificate can thus never name a
    device other than the one it belongs to, nor carry text that is no thing name at all."""
    if common_name:
        try:
            check_thing_name(common_name)
        except InvalidRequest:
            raise InvalidRequest(f"the CSR's subject CN {common_name!r} must be empty or the thing name the "
                                 "certificate will be provisioned for (1-128 of a-z, A-Z, 0-9, ':', '_', '-')"
                                 ) from None


def check_thing_matches(record: dict[str, Any], thing: str) -> None:
    common_name = str(record.get("commonName") or "")
    if common_name and common_name != thing:
        raise InvalidRequest(f"the certificate's subject CN is {common_name!r}: it can only be provisioned as "
                             f"thing {common_name!r}, not {thing!r}")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
