"""AWS IoT policy documents and their evaluation.

A connection may do something only if some statement of some attached policy allows it and
no statement denies it (explicit Deny wins; the default is deny), as in AWS IoT. Resources are
ARNs (``arn:aws:iot:REGION:ACCOUNT:topic/...``); ``*`` and ``?`` are wildcards, and the policy
variables ``${iot:ClientId}`` and ``${iot:Connection.Thing.ThingName}`` are substituted per
connection, and so is geofleet's ``${geofleet:CertificateId}`` (the SHA-256 of the connection's
certificate, AWS's certificate id), which binds a resource to one certificate. A statement that
uses a variable the connection does not define matches nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any

from geofleet.domain.errors import InvalidRequest

MAX_POLICY_BYTES = 2048 * 10


class Action(StrEnum):
    CONNECT = "iot:Connect"
    PUBLISH = "iot:Publish"
    SUBSCRIBE = "iot:Subscribe"
    RECEIVE = "iot:Receive"
    RETAIN_PUBLISH = "iot:RetainPublish"
    """Publishing with the RETAIN flag (a live PUBLISH or a Last Will); needs iot:Publish too."""


_RESOURCE_TYPE = {
    Action.CONNECT: "client",
    Action.PUBLISH: "topic",
    Action.RECEIVE: "topic",
    Action.RETAIN_PUBLISH: "topic",
    Action.SUBSCRIBE: "topicfilter",
}

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
CERTIFICATE_ID_VARIABLE = "geofleet:CertificateId"
KNOWN_VARIABLES = frozenset({"iot:ClientId", "iot:Connection.Thing.ThingName", CERTIFICATE_ID_VARIABLE})


@dataclass(frozen=True, slots=True)
class Statement:
    allow: bool
    actions: tuple[str, ...]
    resources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    statements: tuple[Statement, ...]


def parse_policy(name: str, document: str | Mapping[str, Any]) -> Policy:
    """Parse and validate a policy document; raises InvalidRequest saying what is wrong."""
    if isinstance(document, str):
        if len(document.encode()) > MAX_POLICY_BYTES:
            raise InvalidRequest(f"policy document is larger than {MAX_POLICY_BYTES} bytes")
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise InvalidRequest(f"policy document is not valid JSON: {exc}") from None
    else:
        data = dict(document)
    if not isinstance(data, dict):
        raise InvalidRequest("policy document must be a JSON object")
    raw = data.get("Statement")
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("policy document needs a non-empty 'Statement' list")
    return Policy(name, tuple(_parse_statement(i, s) for i, s in enumerate(raw)))


def _parse_statement(index: int, raw: Any) -> Statement:
    where = f"Statement[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be an object")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise InvalidRequest(f"{where}.Effect must be 'Allow' or 'Deny'")
    actions = _strings(raw.get("Action"), f"{where}.Action")
    for action in actions:
        if not (action == "iot:*" or action in set(Action)):
            raise InvalidRequest(
                f"{where}.Action {action!r} is not supported; use iot:Connect, iot:Publish, "
                "iot:RetainPublish, iot:Subscribe, iot:Receive or iot:*"
            )
    resources = _strings(raw.get("Resource"), f"{where}.Resource")
    for resource in resources:
        unknown = set(_VARIABLE.findall(resource)) - KNOWN_VARIABLES
        if unknown:
            raise InvalidRequest(f"{where}.Resource uses unsupported policy variables {sorted(unknown)}")
    return Statement(effect == "Allow", actions, resources)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidRequest(f"{where} must be a string or a non-empty list of strings")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the values of the policy variables for one connection."""

    client_id: str
    thing_name: str | None
    region: str
    account: str
    certificate_id: str | None = None

    def arn(self, action: Action, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:{_RESOURCE_TYPE[action]}/{name}"

    def variables(self) -> dict[str, str]:
        values = {"iot:ClientId": self.client_id}
        if self.thing_name is not None:
            values["iot:Connection.Thing.ThingName"] = self.thing_name
        if self.certificate_id is not None:
            values[CERTIFICATE_ID_VARIABLE] = self.certificate_id
        return values


def is_allowed(policies: Iterable[Policy], principal: Principal, action: Action, name: str) -> bool:
    """AWS's rule: allowed iff some statement allows and none denies."""
    resource = principal.arn(action, name)
    variables = principal.variables()
    allowed = False
    for policy in policies:
        for statement in policy.statements:
            if not _acts_on(statement, action):
                continue
            if any(_matches(pattern, resource, variables) for pattern in statement.resources):
                if not statement.allow:
                    return False
                allowed = True
    return allowed


def _acts_on(statement: Statement, action: Action) -> bool:
    return any(a == "iot:*" or a == action for a in statement.actions)


def _matches(pattern: str, resource: str, variables: Mapping[str, str]) -> bool:
    """Match an ARN pattern field by field, so that a ``*`` in the region or account field
    cannot run past ``:`` into the resource name (``arn:aws:iot:*:*:topic/dt/a/*`` must not
    match ``dt/b/x:topic/dt/a/y``)."""
    fields = pattern.split(":", 5)
    if len(fields) < 6:
        return _matches_name(pattern, resource, variables)
    targets = resource.split(":", 5)
    return all(_matches_name(f, t, {}) for f, t in zip(fields[:5], targets[:5], strict=True)) and \
        _matches_name(fields[5], targets[5], variables)


def _matches_name(pattern: str, name: str, variables: Mapping[str, str]) -> bool:
    substituted: list[str] = []
    position = 0
    for match in _VARIABLE.finditer(pattern):
        value = variables.get(match.group(1))
        if value is None:
            return False  # an undefined variable: this resource matches nothing
        substituted.append(_glob(pattern[position:match.start()]))
        substituted.append(re.escape(value))
        position = match.end()
    substituted.append(_glob(pattern[position:]))
    return re.fullmatch("".join(substituted), name, re.DOTALL) is not None


@lru_cache(maxsize=4096)
def _glob(text: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)


def default_device_policy() -> dict[str, Any]:
    """Least privilege for a device: connect as its own thing name, use only its own topics.

    Retained publishes (iot:RetainPublish) are allowed on the device's own application topics
    (``dt/<thing>/*``, ``cmd/<thing>/*``), as AWS's example policies do, and not on the shadow
    topics: a retained shadow request would replay to every later subscriber."""
    thing = "${iot:Connection.Thing.ThingName}"
    own_topics = [f"$aws/things/{thing}/shadow/*", f"dt/{thing}/*", f"cmd/{thing}/*"]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": f"arn:aws:iot:*:*:client/{thing}"},
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in own_topics],
            },
            {
                "Effect": "Allow",
                "Action": "iot:RetainPublish",
                "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in own_topics[1:]],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"arn:aws:iot:*:*:topicfilter/{t}" for t in own_topics],
            },
        ],
    }


DEFAULT_POLICY_NAME = "geofleet-default-device"


CLAIM_POLICY_NAME = "geofleet-fleet-provisioning-claim"

CLAIM_CLIENT_PREFIX = "claim."
"""Claim sessions connect as ``claim.<certificate id>`` or ``claim.<certificate id>.<anything>``.
A thing name can never contain ``.`` (``names.check_thing_name``), and a device connects only
as its thing name, so a claim session can never take (and kick) a device's client id; and the
certificate id in it means one claim certificate cannot take another one's sessions either."""

CREATE_FROM_CSR_TOPIC = "$aws/certificates/create-from-csr/json"
CREATE_KEYS_TOPIC = "$aws/certificates/create/json"
"""CreateKeysAndCertificate: the region makes the key (the default flow of AWS's samples)."""
PROVISION_TOPICS = "$aws/provisioning-templates/*/provision/json"
"""The request topics of AWS fleet provisioning (JSON payloads); ``*`` is the template name."""


def claim_client_id(certificate_id: str, suffix: str = "") -> str:
    """The client id a claim session must use (``suffix`` lets sessions of one claim certificate,
    e.g. several factory lines, connect side by side)."""
    return f"{CLAIM_CLIENT_PREFIX}{certificate_id}" + (f".{suffix}" if suffix else "")


def is_claim_client_id(client_id: str) -> bool:
    """A claim session's client id (never a device's: thing names have no ``.``). Claim sessions
    leave no presence record: one per suffix would let a claim certificate fill every region."""
    return client_id.startswith(CLAIM_CLIENT_PREFIX)


def claim_policy() -> dict[str, Any]:
    """What a claim certificate may do: connect in its own client id namespace, publish the two
    fleet provisioning requests, and hear only the answers (which the region sends to the
    requesting connection alone). It may not publish to an ``/accepted`` or ``/rejected`` topic
    (a forged answer to another claim session) nor receive requests (which carry ownership
    tokens)."""
    cert = "${" + CERTIFICATE_ID_VARIABLE + "}"
    requests = (CREATE_FROM_CSR_TOPIC, CREATE_KEYS_TOPIC, PROVISION_TOPICS)
    answers = [f"{topic}/{outcome}" for topic in requests for outcome in ("accepted", "rejected")]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect",
             "Resource": [f"arn:aws:iot:*:*:client/{CLAIM_CLIENT_PREFIX}{cert}",
                          f"arn:aws:iot:*:*:client/{CLAIM_CLIENT_PREFIX}{cert}.*"]},
            {"Effect": "Allow", "Action": "iot:Publish",
             "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in requests]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in answers]},
            {"Effect": "Allow", "Action": "iot:Subscribe",
             "Resource": [f"arn:aws:iot:*:*:topicfilter/{t}" for t in answers]},
            {"Effect": "Deny", "Action": "iot:Publish",
             "Resource": [f"arn:aws:iot:*:*:topic/{t}" for t in answers]},
        ],
    }


def builtin_policies() -> dict[str, dict[str, Any]]:
    """The policies every region makes when they are missing, by name."""
    return {DEFAULT_POLICY_NAME: default_device_policy(), CLAIM_POLICY_NAME: claim_policy()}


def builtin_upgrade(name: str, stored: dict[str, Any]) -> dict[str, Any] | None:
    """The current document of a built-in policy when ``stored`` is one geofleet wrote before
    (a region upgraded in place replaces it), else None.

    The claim policy is geofleet's alone (its namespace and topics are protocol, not taste): any
    other version is replaced. The default device policy may have been edited by its operator:
    it is replaced only when it is exactly the version from before ``iot:RetainPublish``
    existed, whose devices would otherwise lose retained publishes on their own topics."""
    current = builtin_policies()[name]
    if stored == current:
        return None
    if name == CLAIM_POLICY_NAME:
        return current
    before_retain = {**current, "Statement": [s for s in current["Statement"] if s["Action"] != "iot:RetainPublish"]}
    return current if stored == before_retain else None

