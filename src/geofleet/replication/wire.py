"""The replication wire format, and the validation every received batch passes before any of
it is applied: a batch that is malformed, out of order, or claims another origin is refused
whole and the replica is left untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geofleet.domain.consumers import check_consumer_name, check_filters
from geofleet.domain.errors import GeofleetError, InvalidRequest
from geofleet.domain.hlc import HLC
from geofleet.domain.jitr import CaStatus
from geofleet.domain.presence import Session, entry_key
from geofleet.domain.records import CertificateStatus, Kind, Record
from geofleet.domain.residency import SHADOW_KIND
from geofleet.store.base import Change

MAX_KEY = 512
_KINDS = {k.value for k in Kind} | {SHADOW_KIND}


class BatchError(GeofleetError):
    """A peer sent something that is not a valid batch of its own changes."""

    status = 502
    code = "BadReplicationBatch"


@dataclass(frozen=True, slots=True)
class Batch:
    region: str
    head: int
    changes: list[Change]
    through: int
    """How far the peer read its log for this batch: at least the last change's seq (the peer
    skips changes this region may not hold, and says so only by this position)."""


def change_to_json(change: Change) -> dict[str, Any]:
    return {"seq": change.seq, "hlc": change.hlc.encode(), "origin": change.origin, "kind": change.kind,
            "key": change.key, "ref": change.ref, "body": change.body}


def record_to_json(record: Record) -> dict[str, Any]:
    return {"kind": record.kind.value, "key": record.key, "ref": record.ref, "body": record.body,
            "hlc": record.hlc.encode(), "origin": record.origin}


def parse_batch(data: Any, peer: str, after: int) -> Batch:
    if not isinstance(data, dict) or data.get("region") != peer:
        raise BatchError(f"batch from {peer} does not name {peer} as its region")
    head, raw = data.get("head"), data.get("changes")
    if not isinstance(head, int) or not isinstance(raw, list):
        raise BatchError(f"batch from {peer} lacks an integer 'head' and a 'changes' list")
    changes: list[Change] = []
    previous = after
    for index, item in enumerate(raw):
        change = _parse_change(item, f"change {index} from {peer}")
        if change.seq <= previous:
            raise BatchError(f"change {index} from {peer} has seq {change.seq}, not after {previous}")
        if change.origin != peer:
            raise BatchError(f"change {index} from {peer} claims origin {change.origin!r}")
        previous = change.seq
        changes.append(change)
    through = data.get("through", previous)
    if not isinstance(through, int) or through < previous or through > head:
        raise BatchError(f"batch from {peer} has 'through' {through!r}, not between {previous} and its head {head}")
    return Batch(peer, head, changes, through)


def _parse_change(item: Any, where: str) -> Change:
    if not isinstance(item, dict):
        raise BatchError(f"{where} is not an object")
    seq, kind, key, ref, origin, body = (item.get(f) for f in ("seq", "kind", "key", "ref", "origin", "body"))
    if not isinstance(seq, int) or kind not in _KINDS or not isinstance(origin, str):
        raise BatchError(f"{where} needs an integer seq, a known kind and an origin")
    if not isinstance(key, str) or not key or len(key) > MAX_KEY or not isinstance(ref, str):
        raise BatchError(f"{where} has an invalid key or ref")
    if body is not None and not isinstance(body, dict):
        raise BatchError(f"{where} has a body that is not an object")
    if kind == SHADOW_KIND:
        _check_ops(body, where)
    elif body is not None:
        _check_body(Kind(kind), body, where, key, origin)
    hlc = parse_hlc(item.get("hlc"), where)
    return Change(seq, hlc, origin, kind, key, ref, body)


def parse_record(item: Any, where: str) -> Record:
    if not isinstance(item, dict) or item.get("kind") not in {k.value for k in Kind}:
        raise BatchError(f"{where} is not a registry record")
    key, ref, origin, body = item.get("key"), item.get("ref"), item.get("origin"), item.get("body")
    if not isinstance(key, str) or not key or not isinstance(ref, str) or not isinstance(origin, str):
        raise BatchError(f"{where} has an invalid key, ref or origin")
    if body is not None and not isinstance(body, dict):
        raise BatchError(f"{where} has a body that is not an object")
    if body is not None:
        _check_body(Kind(item["kind"]), body, where, key, origin)
    return Record(Kind(item["kind"]), key, body, parse_hlc(item.get("hlc"), where), origin, ref)


_REQUIRED = {
    Kind.THING: ("thingName",),
    Kind.THING_TYPE: ("thingTypeName",),
    Kind.CERTIFICATE: ("certificateId", "certificatePem", "status"),
    Kind.POLICY: ("policyName", "policyDocument"),
    Kind.POLICY_ATTACHMENT: ("policyName", "certificateId"),
    Kind.THING_PRINCIPAL: ("thingName", "certificateId"),
    Kind.ENROLLMENT_GROUP: ("name", "key", "policyName"),
    Kind.ENROLLMENT: ("name", "key", "policyName"),
    Kind.PRESENCE: ("device", "region", "sessionId", "connectedAt"),
    Kind.CA_CERTIFICATE: ("certificateId", "certificatePem", "status", "autoRegistrationStatus"),
    Kind.TOPIC_RULE: ("ruleName", "sql"),
    Kind.CONSUMER: ("consumerName",),
}


def _check_body(kind: Kind, body: dict[str, Any], where: str, key: str, origin: str) -> None:
    missing = [f for f in _REQUIRED[kind] if not isinstance(body.get(f), str)]
    if missing:
        raise BatchError(f"{where}: a {kind.value} needs string fields {missing}")
    if kind is Kind.CERTIFICATE and body["status"] not in {s.value for s in CertificateStatus}:
        raise BatchError(f"{where}: unknown certificate status {body['status']!r}")
    if kind is Kind.CA_CERTIFICATE and body["status"] not in {s.value for s in CaStatus}:
        raise BatchError(f"{where}: unknown CA certificate status {body['status']!r}")
    if kind is Kind.CONSUMER:
        if body["consumerName"] != key:
            raise BatchError(f"{where}: a consumer's name must be its key")
        try:
            check_consumer_name(key)
            check_filters(body.get("filters"))
        except InvalidRequest as exc:
            raise BatchError(f"{where}: invalid consumer ({exc.message})") from None
    if kind is Kind.PRESENCE:
        try:
            session = Session.from_json(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise BatchError(f"{where}: invalid presence entry ({exc})") from None
        if session.region != origin or key != entry_key(session.device, session.region):
            raise BatchError(f"{where}: a region may only write presence entries of its own sessions")


def parse_hlc(value: Any, where: str) -> HLC:
    try:
        return HLC.decode(value)
    except ValueError:
        raise BatchError(f"{where} has an invalid HLC {value!r}") from None


def _check_ops(body: Any, where: str) -> None:
    ops = body.get("ops") if isinstance(body, dict) else None
    if not isinstance(ops, dict):
        raise BatchError(f"{where}: a shadow change needs an 'ops' object")
    check_leaves(ops, where)


def check_leaves(ops: dict[str, Any], where: str) -> None:
    for path, entry in ops.items():
        if not (isinstance(path, str) and isinstance(entry, list) and len(entry) == 4
                and isinstance(entry[1], str) and isinstance(entry[2], bool)):
            raise BatchError(f"{where}: malformed shadow leaf {path!r}")
        parse_hlc(entry[0], where)


def parse_digests(raw: Any, peer: str) -> dict[str, dict[int, str]]:
    """A peer's ``/v1/digest`` answer: scope -> bucket -> digest (hex)."""
    if not isinstance(raw, dict):
        raise BatchError(f"digests from {peer} lack a 'scopes' object")
    digests: dict[str, dict[int, str]] = {}
    for scope, buckets in raw.items():
        if not isinstance(buckets, dict) or not all(isinstance(d, str) for d in buckets.values()):
            raise BatchError(f"digests from {peer}: scope {scope!r} is not an object of bucket digests")
        try:
            digests[str(scope)] = {int(b): d for b, d in buckets.items()}
        except ValueError:
            raise BatchError(f"digests from {peer}: scope {scope!r} has a bucket that is not a number") from None
    return digests
