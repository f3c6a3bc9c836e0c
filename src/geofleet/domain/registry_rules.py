"""AWS IoT's registry rules, as pure checks: attribute limits and when a resource may be
deleted or change status.

They live here rather than in the registry service so that every backend (the region node's
own registry, the AWS IoT Core backend's projector) refuses the same requests with the same
messages.
"""

from __future__ import annotations

import re
from typing import Any

from geofleet.domain.errors import Conflict, InvalidRequest
from geofleet.domain.records import CertificateStatus

MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_LENGTH = 800
_ATTRIBUTE_NAME = re.compile(r"\A[a-zA-Z0-9_.,@/:#-]{1,128}\Z")
_ATTRIBUTE_VALUE = re.compile(rf"\A[a-zA-Z0-9_.,@/:#=\[\]-]{{0,{MAX_ATTRIBUTE_LENGTH}}}\Z")


def check_attributes(attributes: dict[str, Any]) -> dict[str, str]:
    """AWS's AttributePayload rules: at most ``MAX_ATTRIBUTES``; names 1-128 characters from
    ``[a-zA-Z0-9_.,@/:#-]``; string values up to 800 characters from ``[a-zA-Z0-9_.,@/:#=[]-]``.
    An empty name is refused (AWS does): it could never be read back or removed.

    >>> check_attributes({"floor": "3"})
    {'floor': '3'}
    """
    for key, value in attributes.items():
        check_attribute_name(key)
        check_attribute_value(key, value)
    return check_attribute_count(dict(attributes))


def merge_attributes(current: dict[str, str], changes: dict[str, str | None], merge: bool) -> dict[str, str]:
    """UpdateThing's attribute payload applied to ``current``: ``merge`` keeps the attributes not
    named; a ``None`` or empty value removes one. Removal needs no check: it also clears names
    stored before the rules."""
    result = dict(current) if merge else {}
    for key, value in changes.items():
        if value is None or value == "":
            result.pop(key, None)
        else:
            check_attribute_name(key)
            result[key] = check_attribute_value(key, value)
    return check_attribute_count(result)


def check_attribute_count(attributes: dict[str, str]) -> dict[str, str]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidRequest(f"a thing may have at most {MAX_ATTRIBUTES} attributes")
    return attributes


def check_attribute_name(key: str) -> None:
    if not isinstance(key, str) or not _ATTRIBUTE_NAME.match(key):
        raise InvalidRequest(f"invalid attribute name {key!r}: use 1-128 characters from a-z, A-Z, 0-9 and _.,@/:#-")


def check_attribute_value(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ATTRIBUTE_VALUE.match(value):
        raise InvalidRequest(f"attribute {key!r}: the value must be a string of up to {MAX_ATTRIBUTE_LENGTH} "
                             "characters from a-z, A-Z, 0-9 and _.,@/:#=[]-")
    return value


def check_expected_version(name: str, version: Any, expected: int | None) -> None:
    """Optimistic locking of UpdateThing/DeleteThing: an ``expected`` version must be the current one."""
    if expected is not None and expected != version:
        raise Conflict(f"thing {name!r} is at version {version}, not {expected}")


def check_thing_deletable(name: str, has_principals: bool) -> None:
    if has_principals:
        raise Conflict(f"thing {name!r} has principals attached: detach them first")


def check_thing_type_deletable(name: str, deprecated: bool, users: list[str]) -> None:
    """A thing type is deleted only once deprecated and no longer used by any thing."""
    if not deprecated:
        raise Conflict(f"thing type {name!r} must be deprecated before it is deleted")
    if users:
        raise Conflict(f"thing type {name!r} is still used by {len(users)} thing(s), e.g. {users[0]!r}")


def check_thing_type_usable(name: str, deprecated: bool) -> None:
    if deprecated:
        raise InvalidRequest(f"thing type {name!r} is deprecated: new things cannot use it")


def check_status_change(cert_id: str, current: str, new: CertificateStatus) -> None:
    """Revocation is final: a REVOKED certificate never becomes anything else."""
    if current == CertificateStatus.REVOKED and new != CertificateStatus.REVOKED:
        raise Conflict(f"certificate {cert_id} is REVOKED; revocation cannot be undone")


def check_certificate_deletable(cert_id: str, status: Any, attached: bool) -> None:
    """Only an INACTIVE (or pending) certificate with nothing attached may be deleted; a REVOKED
    one stays as the revocation record every region checks against."""
    if status == CertificateStatus.REVOKED:
        raise Conflict(f"certificate {cert_id} is REVOKED and is kept as a revocation record")
    if status == CertificateStatus.ACTIVE:
        raise Conflict(f"certificate {cert_id} is ACTIVE: set it INACTIVE before deleting it")
    if attached:
        raise Conflict(f"certificate {cert_id} still has policies or things attached: detach them first")


def check_policy_deletable(name: str, attached: bool) -> None:
    if attached:
        raise Conflict(f"policy {name!r} is attached to certificates: detach it first")


def arn(region: str, account: str, resource: str, name: str) -> str:
    """The ARN AWS gives a registry resource, e.g. ``arn(region, account, "thing", "pump-1")``."""
    return f"arn:aws:iot:{region}:{account}:{resource}/{name}"
