"""The registry: things, thing types, certificates, policies and attachments of one region.

It validates each request with AWS IoT's rules, writes a ``Record`` through the store (which
logs it for replication) and tells its observers, which publish events, refresh the policy
cache and cut sessions whose certificate stopped being ACTIVE.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography import x509

from geofleet.domain.enrollment import encode_key
from geofleet.domain.errors import Conflict, InvalidRequest, NotFound
from geofleet.domain.hlc import Clock
from geofleet.domain.names import check_policy_name, check_thing_name, check_type_name
from geofleet.domain.policy import CLAIM_POLICY_NAME, Policy, parse_policy
from geofleet.domain.records import CertificateStatus, Kind, Record, dependencies, pair_key, supersedes
from geofleet.pki.ca import Authority, cert_pem, certificate_id, load_cert, sign_csr
from geofleet.store.base import Store

Json = dict[str, Any]
Observer = Callable[[Record | None, Record], None]
"""Called with (previous, new) after every write."""

MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_LENGTH = 800
_ATTRIBUTE_NAME = re.compile(r"\A[a-zA-Z0-9_.,@/:#-]{1,128}\Z")
_ATTRIBUTE_VALUE = re.compile(rf"\A[a-zA-Z0-9_.,@/:#=\[\]-]{{0,{MAX_ATTRIBUTE_LENGTH}}}\Z")


class Registry:
    def __init__(self, store: Store, clock: Clock, region: str, account: str, authority: Authority) -> None:
        self._store = store
        self._clock = clock
        self._region = region
        self._account = account
        self._authority = authority
        self._observers: list[Observer] = []

    def observe(self, observer: Observer) -> None:
        self._observers.append(observer)

    def arn(self, resource: str, name: str) -> str:
        return f"arn:aws:iot:{self._region}:{self._account}:{resource}/{name}"

    # -- things ----------------------------------------------------------------------------

    def create_thing(self, name: str, type_name: str | None = None, attributes: dict[str, str] | None = None) -> Json:
        check_thing_name(name)
        attributes = _check_attributes(attributes or {})
        existing = self._live(Kind.THING, name)
        if existing is not None:
            body = existing.body or {}
            if body.get("thingTypeName") == type_name and body.get("attributes") == attributes:
                return self._thing_summary(body)  # CreateThing is idempotent for identical input
            raise Conflict(f"thing {name!r} already exists with different type or attributes")
        if type_name is not None:
            self._check_usable_type(type_name)
        body = {"thingName": name, "thingId": str(uuid.uuid4()), "thingTypeName": type_name,
                "attributes": attributes, "version": 1}
        self._write(Kind.THING, name, body)
        return self._thing_summary(body)

    def describe_thing(self, name: str) -> Json:
        body = self._require(Kind.THING, name, "thing").body or {}
        return {**body, "thingArn": self.arn("thing", name)}

    def list_things(self, after: str | None = None, limit: int | None = None) -> list[Json]:
        """Every thing; with ``limit``, a keyset page: at most ``limit`` things named after ``after``."""
        return [{**(r.body or {}), "thingArn": self.arn("thing", r.key)}
                for r in self._listed(Kind.THING, after, limit)]

    def update_thing(
        self,
        name: str,
        *,
        attributes: dict[str, str | None] | None = None,
        merge: bool = True,
        type_name: str | None = None,
        remove_type: bool = False,
        expected_version: int | None = None,
    ) -> Json:
        body = dict(self._require(Kind.THING, name, "thing").body or {})
        if expected_version is not None and expected_version != body["version"]:
            raise Conflict(f"thing {name!r} is at version {body['version']}, not {expected_version}")
        if attributes is not None:
            current = dict(body["attributes"]) if merge else {}
            for key, value in attributes.items():
                if value is None or value == "":
                    current.pop(key, None)  # removal needs no check: it also clears names stored before the rules
                else:
                    _check_attribute_name(key)
                    current[key] = _check_attribute_value(key, value)
            body["attributes"] = _check_attribute_count(current)
        if remove_type:
            body["thingTypeName"] = None
        elif type_name is not None:
            self._check_usable_type(type_name)
            body["thingTypeName"] = type_name
        body["version"] += 1
        self._write(Kind.THING, name, body)
        return self.describe_thing(name)

    def delete_thing(self, name: str, expected_version: int | None = None) -> None:
        record = self._live(Kind.THING, name)
        if record is None:
            return  # DeleteThing of an absent thing succeeds, as in AWS
        version = (record.body or {}).get("version")
        if expected_version is not None and expected_version != version:
            raise Conflict(f"thing {name!r} is at version {version}, not {expected_version}")
        if self._store.records(Kind.THING_PRINCIPAL, prefix=f"{name}|"):
            raise Conflict(f"thing {name!r} has principals attached: detach them first")
        self._delete(record)

    def _thing_summary(self, body: Json) -> Json:
        return {"thingName": body["thingName"], "thingId": body["thingId"],
                "thingArn": self.arn("thing", body["thingName"])}

    # -- thing types -----------------------------------------------------------------------

    def create_thing_type(self, name: str, description: str = "", searchable: list[str] | None = None) -> Json:
        check_type_name(name)
        if self._live(Kind.THING_TYPE, name) is not None:
            raise Conflict(f"thing type {name!r} already exists")
        body = {"thingTypeName": name, "thingTypeId": str(uuid.uuid4()),
                "description": description, "searchableAttributes": list(searchable or []),
                "deprecated": False, "creationDate": int(time.time())}
        self._write(Kind.THING_TYPE, name, body)
        return {**body, "thingTypeArn": self.arn("thingtype", name)}

    def describe_thing_type(self, name: str) -> Json:
        body = self._require(Kind.THING_TYPE, name, "thing type").body or {}
        return {**body, "thingTypeArn": self.arn("thingtype", name)}

    def list_thing_types(self) -> list[Json]:
        return [r.body or {} for r in self._store.records(Kind.THING_TYPE)]

    def deprecate_thing_type(self, name: str, undo: bool = False) -> Json:
        body = dict(self._require(Kind.THING_TYPE, name, "thing type").body or {})
        body["deprecated"] = not undo
        self._write(Kind.THING_TYPE, name, body)
        return body

    def delete_thing_type(self, name: str) -> None:
        record = self._require(Kind.THING_TYPE, name, "thing type")
        if not (record.body or {}).get("deprecated"):
            raise Conflict(f"thing type {name!r} must be deprecated before it is deleted")
        users = [t.key for t in self._store.records(Kind.THING) if (t.body or {}).get("thingTypeName") == name]
        if users:
            raise Conflict(f"thing type {name!r} is still used by {len(users)} thing(s), e.g. {users[0]!r}")
        self._delete(record)

    def _check_usable_type(self, name: str) -> None:
        body = self._require(Kind.THING_TYPE, name, "thing type").body or {}
        if body.get("deprecated"):
            raise InvalidRequest(f"thing type {name!r} is deprecated: new things cannot use it")

    # -- certificates ----------------------------------------------------------------------

    def create_certificate_from_csr(self, csr_pem: str, set_active: bool = False) -> Json:
        """Sign a CSR with this region's CA; the private key stays wherever the CSR was made."""
        cert = sign_csr(self._authority, csr_pem)
        status = CertificateStatus.ACTIVE if set_active else CertificateStatus.INACTIVE
        return self._register(cert, status)

    def register_certificate(self, pem: str, status: CertificateStatus, extra: Json | None = None) -> Json:
        """Register a certificate issued by the fleet's PKI elsewhere (another region's CA);
        ``extra`` fields go into its record (fleet provisioning keeps its ownership token there)."""
        return self._register(load_cert(pem), status, extra)

    def create_claim_certificate(self, group: str, csr_pem: str) -> Json:
        """A claim certificate for AWS-style fleet provisioning over MQTT: it may only ask for a
        device certificate on behalf of ``group`` (the claim policy allows nothing else)."""
        body = self.enrollment_group(group)
        if body.get("revoked"):
            raise Conflict(f"enrollment group {group!r} is revoked")
        cert = self._register(sign_csr(self._authority, csr_pem), CertificateStatus.ACTIVE, {"claimGroup": group})
        self.attach_policy(CLAIM_POLICY_NAME, cert["certificateId"])
        return cert

    def _register(self, cert: x509.Certificate, status: CertificateStatus, extra: Json | None = None) -> Json:
        cert_id = certificate_id(cert)
        existing = self._live(Kind.CERTIFICATE, cert_id)
        if existing is not None:
            raise Conflict(f"certificate {cert_id} is already registered")
        body = {"certificateId": cert_id, "certificatePem": cert_pem(cert).decode(), "status": status.value,
                "issuer": cert.issuer.rfc4514_string(), "creationDate": int(time.time()), **(extra or {})}
        self._write(Kind.CERTIFICATE, cert_id, body)
        return {"certificateId": cert_id, "certificateArn": self.arn("cert", cert_id),
                "certificatePem": body["certificatePem"]}

    def describe_certificate(self, cert_id: str) -> Json:
        body = self._require(Kind.CERTIFICATE, cert_id, "certificate").body or {}
        return {**body, "certificateArn": self.arn("cert", cert_id)}

    def list_certificates(self, after: str | None = None, limit: int | None = None) -> list[Json]:
        """Every certificate (without its PEM); with ``limit``, a keyset page by certificate id."""
        return [{k: v for k, v in (r.body or {}).items() if k != "certificatePem"}
                for r in self._listed(Kind.CERTIFICATE, after, limit)]

    def _listed(self, kind: Kind, after: str | None, limit: int | None) -> list[Record]:
        if limit is None:
            return self._store.records(kind)
        return self._store.records_after(kind, after or "", limit)

    def certificate_status(self, cert_id: str) -> CertificateStatus | None:
        record = self._live(Kind.CERTIFICATE, cert_id)
        return None if record is None else CertificateStatus((record.body or {})["status"])

    def update_certificate(self, cert_id: str, status: CertificateStatus) -> Json:
        body = dict(self._require(Kind.CERTIFICATE, cert_id, "certificate").body or {})
        if body["status"] == CertificateStatus.REVOKED and status != CertificateStatus.REVOKED:
            raise Conflict(f"certificate {cert_id} is REVOKED; revocation cannot be undone")
        if body["status"] != status:
            body["status"] = status.value
            self._write(Kind.CERTIFICATE, cert_id, body)
        return self.describe_certificate(cert_id)

    def delete_certificate(self, cert_id: str) -> None:
        record = self._require(Kind.CERTIFICATE, cert_id, "certificate")
        status = (record.body or {}).get("status")
        if status == CertificateStatus.REVOKED:
            raise Conflict(f"certificate {cert_id} is REVOKED and is kept as a revocation record")
        if status == CertificateStatus.ACTIVE:
            raise Conflict(f"certificate {cert_id} is ACTIVE: set it INACTIVE before deleting it")
        if self.policies_of(cert_id) or self.things_of(cert_id):
            raise Conflict(f"certificate {cert_id} still has policies or things attached: detach them first")
        self._delete(record)

    # -- policies --------------------------------------------------------------------------

    def create_policy(self, name: str, document: str) -> Json:
        check_policy_name(name)
        parse_policy(name, document)
        if self._live(Kind.POLICY, name) is not None:
            raise Conflict(f"policy {name!r} already exists; PUT a new version instead")
        return self._put_policy(name, document, 1)

    def replace_policy(self, name: str, document: str) -> Json:
        """Give a policy a new document (AWS's new default version)."""
        body = self._require(Kind.POLICY, name, "policy").body or {}
        parse_policy(name, document)
        return self._put_policy(name, document, int(body["policyVersionId"]) + 1)

    def _put_policy(self, name: str, document: str, version: int) -> Json:
        body = {"policyName": name, "policyDocument": document, "policyVersionId": str(version)}
        self._write(Kind.POLICY, name, body)
        return {**body, "policyArn": self.arn("policy", name)}

    def get_policy(self, name: str) -> Json:
        body = self._require(Kind.POLICY, name, "policy").body or {}
        return {**body, "policyArn": self.arn("policy", name)}

    def list_policies(self) -> list[Json]:
        return [{"policyName": r.key, "policyArn": self.arn("policy", r.key)} for r in self._store.records(Kind.POLICY)]

    def delete_policy(self, name: str) -> None:
        record = self._require(Kind.POLICY, name, "policy")
        if self._store.records(Kind.POLICY_ATTACHMENT, ref=name):
            raise Conflict(f"policy {name!r} is attached to certificates: detach it first")
        self._delete(record)

    def attach_policy(self, policy: str, cert_id: str) -> None:
        self._require(Kind.POLICY, policy, "policy")
        self._require(Kind.CERTIFICATE, cert_id, "certificate")
        if self._live(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy)) is None:
            self._write(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy),
                        {"policyName": policy, "certificateId": cert_id}, ref=policy)

    def detach_policy(self, policy: str, cert_id: str) -> None:
        record = self._live(Kind.POLICY_ATTACHMENT, pair_key(cert_id, policy))
        if record is not None:
            self._delete(record)

    def policies_of(self, cert_id: str) -> list[str]:
        return [r.ref for r in self._store.records(Kind.POLICY_ATTACHMENT, prefix=f"{cert_id}|")]

    def policy_targets(self, policy: str) -> list[str]:
        return [(r.body or {})["certificateId"] for r in self._store.records(Kind.POLICY_ATTACHMENT, ref=policy)]

    def effective_policies(self, cert_id: str) -> list[Policy]:
        policies = []
        for name in self.policies_of(cert_id):
            record = self._live(Kind.POLICY, name)
            if record is not None:
                policies.append(parse_policy(name, (record.body or {})["policyDocument"]))
        return policies

    # -- thing principals ------------------------------------------------------------------

    def attach_thing_principal(self, thing: str, cert_id: str) -> None:
        self._require(Kind.THING, thing, "thing")
        self._require(Kind.CERTIFICATE, cert_id, "certificate")
        if self._live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id)) is None:
            self._write(Kind.THING_PRINCIPAL, pair_key(thing, cert_id),
                        {"thingName": thing, "certificateId": cert_id}, ref=cert_id)

    def detach_thing_principal(self, thing: str, cert_id: str, *, even_if_absent: bool = False) -> None:
        """``even_if_absent`` writes the tombstone anyway, so that an attachment still on its way
        from another region (older) cannot re-attach the certificate when it arrives."""
        record = self._live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id))
        if record is not None:
            self._delete(record)
        elif even_if_absent:
            self._delete(Record(Kind.THING_PRINCIPAL, pair_key(thing, cert_id), None, self._clock.now(), self._region,
                                cert_id))

    def principals_of(self, thing: str) -> list[str]:
        return [(r.body or {})["certificateId"] for r in self._store.records(Kind.THING_PRINCIPAL, prefix=f"{thing}|")]

    def things_of(self, cert_id: str) -> list[str]:
        return [(r.body or {})["thingName"] for r in self._store.records(Kind.THING_PRINCIPAL, ref=cert_id)]

    def is_attached(self, thing: str, cert_id: str) -> bool:
        return self._live(Kind.THING_PRINCIPAL, pair_key(thing, cert_id)) is not None

    # -- enrollment groups -----------------------------------------------------------------

    def create_enrollment_group(self, name: str, *, policy: str, thing_type: str | None = None,
                                attributes: dict[str, str] | None = None, allowed_regions: list[str] | None = None,
                                reprovision: bool = False, individual: bool = False) -> Json:
        """A new group (or, with ``individual``, an allow-list entry whose name is the device id)
        with a fresh secret key; the answer is the only time the key is shown."""
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        (check_thing_name if individual else check_type_name)(name)
        if self._live(kind, name) is not None:
            raise Conflict(f"{'enrollment' if individual else 'enrollment group'} {name!r} already exists")
        self._require(Kind.POLICY, policy, "policy")
        if thing_type is not None:
            self._check_usable_type(thing_type)
        body = {"name": name, "key": encode_key(secrets.token_bytes(32)), "policyName": policy,
                "thingTypeName": thing_type, "attributes": _check_attributes(attributes or {}),
                "allowedRegions": allowed_regions, "reprovision": reprovision, "revoked": False}
        self._write(kind, name, body)
        return body

    def enrollment_group(self, name: str, individual: bool = False) -> Json:
        """The group (or individual enrollment) with its key, for verifying proofs; the API never
        returns keys after creation."""
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        return dict(self._require(kind, name, "enrollment" if individual else "enrollment group").body or {})

    def list_enrollment_groups(self, individual: bool = False) -> list[Json]:
        kind = Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP
        return [{k: v for k, v in (r.body or {}).items() if k != "key"} for r in self._store.records(kind)]

    def revoke_enrollment_group(self, name: str, individual: bool = False) -> Json:
        """Revoke a group and, in the same transaction, every claim certificate issued for it:
        REVOKED replicates and wins over any other status, and every region's gate cuts the
        live sessions of a certificate that stops being ACTIVE."""
        body = self.enrollment_group(name, individual)
        body["revoked"] = True
        with self._store.atomic():
            self._write(Kind.ENROLLMENT if individual else Kind.ENROLLMENT_GROUP, name, body)
            if not individual:
                for cert_id in self.claim_certificates_of(name):
                    self.update_certificate(cert_id, CertificateStatus.REVOKED)
        return {k: v for k, v in body.items() if k != "key"}

    def claim_certificates_of(self, group: str) -> list[str]:
        """The claim certificates issued for ``group`` (a scan: revocation is rare)."""
        return [r.key for r in self._store.records(Kind.CERTIFICATE) if (r.body or {}).get("claimGroup") == group]

    # -- plumbing --------------------------------------------------------------------------

    def _live(self, kind: Kind, key: str) -> Record | None:
        record = self._store.get(kind, key)
        return None if record is None or record.deleted else record

    def _require(self, kind: Kind, key: str, what: str) -> Record:
        record = self._live(kind, key)
        if record is None:
            raise NotFound(f"{what} {key!r} does not exist")
        return record

    def _write(self, kind: Kind, key: str, body: Json, ref: str = "") -> None:
        self.put_local(kind, key, body, ref)

    def _delete(self, record: Record) -> None:
        self._commit(Record(record.kind, record.key, None, self._clock.now(), self._region, record.ref))

    def put_local(self, kind: Kind, key: str, body: Json, ref: str = "") -> Record:
        """Write a record of a kind this class does not manage itself (presence), with the same
        log, replication and observers as every registry write."""
        record = Record(kind, key, body, self._clock.now(), self._region, ref)
        self._commit(record)
        return record

    def _commit(self, record: Record, *, log: bool = True) -> None:
        previous = self._store.get(record.kind, record.key)
        self._store.put(record, log=log)
        for observer in self._observers:
            observer(previous, record)

    # -- replication -----------------------------------------------------------------------

    def merge(self, record: Record) -> bool:
        """Apply a record written in another region, if it wins over what is here (see
        ``records.supersedes``). A record whose dependencies have not arrived yet (an attachment
        before its certificate) is parked and applied when they arrive. Returns whether it was
        applied now."""
        self._clock.observe(record.hlc)
        if not supersedes(record, self._store.get(record.kind, record.key)):
            return False
        missing = [(kind, key) for kind, key in dependencies(record) if self._store.get(kind, key) is None]
        if missing:
            self._store.park(record, missing)
            return False
        self._commit(record, log=False)
        for waiting in self._store.unpark(record.kind, record.key):
            self.merge(waiting)
        return True


def _check_attributes(attributes: dict[str, Any]) -> dict[str, str]:
    """AWS's AttributePayload rules: at most ``MAX_ATTRIBUTES``; names 1-128 characters from
    ``[a-zA-Z0-9_.,@/:#-]``; string values up to 800 characters from ``[a-zA-Z0-9_.,@/:#=[]-]``.
    An empty name is refused (AWS does): it could never be read back or removed."""
    for key, value in attributes.items():
        _check_attribute_name(key)
        _check_attribute_value(key, value)
    return _check_attribute_count(dict(attributes))


def _check_attribute_count(attributes: dict[str, str]) -> dict[str, str]:
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidRequest(f"a thing may have at most {MAX_ATTRIBUTES} attributes")
    return attributes


def _check_attribute_name(key: str) -> None:
    if not isinstance(key, str) or not _ATTRIBUTE_NAME.match(key):
        raise InvalidRequest(f"invalid attribute name {key!r}: use 1-128 characters from a-z, A-Z, 0-9 and _.,@/:#-")


def _check_attribute_value(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ATTRIBUTE_VALUE.match(value):
        raise InvalidRequest(f"attribute {key!r}: the value must be a string of up to {MAX_ATTRIBUTE_LENGTH} "
                             "characters from a-z, A-Z, 0-9 and _.,@/:#=[]-")
    return value
