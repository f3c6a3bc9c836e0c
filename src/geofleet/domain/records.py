"""Registry records and the rule that decides between two versions of one.

Every registry object (thing, thing type, certificate, policy and the two kinds of attachment)
is stored as a ``Record``: a kind, a key, a JSON body (``None`` for a tombstone), the HLC of the
write and the region that made it. One record type lets one change log, one replication stream
and one merge rule serve every kind of object.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from geofleet.domain.hlc import HLC


class Kind(StrEnum):
    THING = "thing"
    THING_TYPE = "thing-type"
    CERTIFICATE = "certificate"
    POLICY = "policy"
    POLICY_ATTACHMENT = "policy-attachment"
    """key ``<certificate id>|<policy name>``, ref = policy name."""
    THING_PRINCIPAL = "thing-principal"
    """key ``<thing name>|<certificate id>``, ref = certificate id."""
    ENROLLMENT_GROUP = "enrollment-group"
    """Who may provision: a group's secret key and what its devices get."""
    ENROLLMENT = "enrollment"
    """An individual enrollment: one device id on the allow-list, with its own key."""
    CA_CERTIFICATE = "ca-certificate"
    """A customer CA registered for just-in-time registration; key = its caCertificateId (the
    hex SHA-256 of its DER). A certificate registered just in time has ``ref`` = that id."""
    PRESENCE = "presence"
    """key ``<device>|<region>``, ref = device: that region's latest session of the device
    (see ``domain.presence``); only that region writes it."""
    TOPIC_RULE = "topic-rule"
    """key = rule name: AWS's TopicRulePayload (see ``domain.rules``)."""
    CONSUMER = "consumer"
    """A durable application consumer: its name and topic filters (``domain.consumers``); every
    region journals what matches them."""


class CertificateStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    PENDING_ACTIVATION = "PENDING_ACTIVATION"


@dataclass(frozen=True, slots=True)
class Record:
    kind: Kind
    key: str
    body: dict[str, Any] | None
    hlc: HLC
    origin: str
    ref: str = ""

    @property
    def deleted(self) -> bool:
        return self.body is None


def pair_key(left: str, right: str) -> str:
    return f"{left}|{right}"


def supersedes(new: Record, old: Record | None) -> bool:
    """Whether ``new`` replaces ``old``: last writer wins on (HLC, region), except that a
    REVOKED certificate (or CA certificate) stays revoked whatever the clocks say."""
    if old is None:
        return True
    if old.kind in _TERMINAL_REVOKED and _revoked(old) and not _revoked(new):
        return False
    if new.kind in _TERMINAL_REVOKED and _revoked(new) and not _revoked(old):
        return True
    return (new.hlc, new.origin) > (old.hlc, old.origin)


_TERMINAL_REVOKED = frozenset({Kind.CERTIFICATE, Kind.CA_CERTIFICATE})
"""Kinds whose REVOKED status is final: a device certificate, and a customer CA."""


def _revoked(record: Record) -> bool:
    return record.body is not None and record.body.get("status") == CertificateStatus.REVOKED


def dependencies(record: Record) -> list[tuple[Kind, str]]:
    """The records this one refers to, which a replica must hold before applying it."""
    body = record.body
    if body is None:
        return []
    if record.kind is Kind.THING and body.get("thingTypeName"):
        return [(Kind.THING_TYPE, body["thingTypeName"])]
    if record.kind is Kind.CERTIFICATE and body.get("caCertificateId"):
        return [(Kind.CA_CERTIFICATE, body["caCertificateId"])]
    if record.kind is Kind.POLICY_ATTACHMENT:
        return [(Kind.CERTIFICATE, body["certificateId"]), (Kind.POLICY, body["policyName"])]
    if record.kind is Kind.THING_PRINCIPAL:
        return [(Kind.THING, body["thingName"]), (Kind.CERTIFICATE, body["certificateId"])]
    if record.kind in (Kind.ENROLLMENT_GROUP, Kind.ENROLLMENT) and body.get("policyName"):
        return [(Kind.POLICY, body["policyName"])]
    return []
