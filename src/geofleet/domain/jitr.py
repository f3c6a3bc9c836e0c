"""Just-in-time registration (JITR) as AWS IoT defines it, as pure rules: customer CA records,
the registration code that proves possession of a CA's key, the registration template that
turns a device certificate into a thing, the validation hook's configuration and verdicts, and
the ``$aws/events/certificates/registered/<caCertificateId>`` event.

They live here, with no I/O, so that the region node and the AWS backend register, refuse and
name things alike: the same device code and the same CA registration carry over.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from geofleet.domain.errors import ConfigError, Conflict, InvalidRequest
from geofleet.domain.names import ThingName, check_thing_name, check_type_name
from geofleet.domain.registry_rules import check_attributes

GUARD_PREFIX = "jitr:"
"""The provision-once guard key of a JITR certificate is ``jitr:<certificateId>``: its owner
region (rendezvous hashing) decides the one registration and runs the validation hook."""

REGISTERED_TOPIC_PREFIX = "$aws/events/certificates/registered/"

MAX_TEMPLATE_ATTRIBUTES = 50


class CaStatus(StrEnum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    REVOKED = "REVOKED"
    """Terminal, as a device certificate's REVOKED (``records.supersedes``)."""


class AutoRegistration(StrEnum):
    ENABLE = "ENABLE"
    DISABLE = "DISABLE"


class ThingNameSource(StrEnum):
    COMMON_NAME = "commonName"
    SERIAL_NUMBER = "serialNumber"


def registration_code(fleet_secret: bytes) -> str:
    """AWS GetRegistrationCode: a 64-hex-digit code a CA owner signs into a verification
    certificate's subject CN. Derived from the fleet secret (an HMAC), so every region answers
    the same code without storing it in a replicated record, and nobody without the secret can
    compute it.

    >>> len(registration_code(b"secret"))
    64
    """
    return hmac.new(fleet_secret, b"geofleet ca registration code v1", hashlib.sha256).hexdigest()


def registered_topic(ca_certificate_id: str) -> str:
    return f"{REGISTERED_TOPIC_PREFIX}{ca_certificate_id}"


def registered_event(certificate_id: str, ca_certificate_id: str, account: str, timestamp_ms: int,
                     registered_s: int) -> dict[str, Any]:
    """The payload AWS publishes when a device certificate is registered just in time."""
    return {
        "certificateId": certificate_id,
        "caCertificateId": ca_certificate_id,
        "timestamp": timestamp_ms,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": account,
        "certificateRegistrationTimestamp": str(registered_s),
    }


# -- CA records ---------------------------------------------------------------------------------

def check_ca_status_change(ca_id: str, current: str, new: CaStatus) -> None:
    """REVOKED is final for a CA as for a device certificate."""
    if current == CaStatus.REVOKED and new != CaStatus.REVOKED:
        raise Conflict(f"CA certificate {ca_id} is REVOKED; revocation cannot be undone")


def check_ca_deletable(ca_id: str, status: Any, certificates: int) -> None:
    """As AWS DeleteCACertificate: only an INACTIVE CA with no device certificates registered
    under it (a REVOKED CA stays, as the record every region refuses its devices by)."""
    if status != CaStatus.INACTIVE:
        raise Conflict(f"CA certificate {ca_id} is {status}: set it INACTIVE before deleting it")
    if certificates:
        raise Conflict(f"CA certificate {ca_id} still has {certificates} device certificate(s) registered "
                       "under it: delete them first")


# -- the registration template ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RegistrationTemplate:
    """What a JITR device becomes once the hook allows it (a CA's ``registrationConfig``)."""

    policy_name: str
    thing_type: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    thing_name_from: ThingNameSource = ThingNameSource.COMMON_NAME

    def to_json(self) -> dict[str, Any]:
        return {"policyName": self.policy_name, "thingTypeName": self.thing_type,
                "attributes": dict(self.attributes), "thingNameFrom": self.thing_name_from.value}


_TEMPLATE_KEYS = frozenset({"policyName", "thingTypeName", "attributes", "thingNameFrom"})
_POLICY_NAME = re.compile(r"\A[\w+=,.@-]{1,128}\Z", re.ASCII)


def parse_template(raw: Any, default_policy: str) -> RegistrationTemplate:
    """A CA's ``registrationConfig``: ``{"policyName"?, "thingTypeName"?, "attributes"?,
    "thingNameFrom"?: "commonName"|"serialNumber"}``; InvalidRequest names what is wrong (an
    unknown key is refused: a typo must not silently register devices without their policy).

    >>> parse_template({"thingNameFrom": "serialNumber"}, "p").thing_name_from.value
    'serialNumber'
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest("registrationConfig must be a JSON object")
    unknown = sorted(set(raw) - _TEMPLATE_KEYS)
    if unknown:
        raise InvalidRequest(f"registrationConfig: unknown field(s) {unknown}; use {sorted(_TEMPLATE_KEYS)}")
    policy = raw.get("policyName") or default_policy
    if not isinstance(policy, str) or not _POLICY_NAME.match(policy):
        raise InvalidRequest(f"registrationConfig.policyName {policy!r} is not a policy name")
    thing_type = raw.get("thingTypeName")
    if thing_type is not None:
        if not isinstance(thing_type, str):
            raise InvalidRequest("registrationConfig.thingTypeName must be a string")
        check_type_name(thing_type)
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise InvalidRequest("registrationConfig.attributes must be an object of strings")
    source = raw.get("thingNameFrom", ThingNameSource.COMMON_NAME.value)
    try:
        name_from = ThingNameSource(source)
    except ValueError:
        raise InvalidRequest(f"registrationConfig.thingNameFrom must be 'commonName' or 'serialNumber', "
                             f"not {source!r}") from None
    return RegistrationTemplate(policy, thing_type, check_attributes(attributes), name_from)


def thing_name_for(template: RegistrationTemplate, common_name: str, serial_number: int) -> ThingName:
    """The thing a JITR certificate becomes: its subject CN, or its serial number in lower-case
    hex; InvalidRequest if that is not a valid thing name (the certificate then stays pending)."""
    if template.thing_name_from is ThingNameSource.SERIAL_NUMBER:
        return check_thing_name(format(serial_number, "x"))
    if not common_name:
        raise InvalidRequest("the certificate has no subject CN to name its thing after")
    return check_thing_name(common_name)


# -- the validation hook ------------------------------------------------------------------------

class HookKind(StrEnum):
    ALLOW_LIST = "allow-list"
    ENROLLMENT = "enrollment"
    WEBHOOK = "webhook"
    PYTHON = "python"


MAX_ALLOW_LIST = 100_000
DEFAULT_WEBHOOK_ATTEMPTS = 5
DEFAULT_WEBHOOK_TIMEOUT_S = 5.0
DEFAULT_RETRY_S = 30.0
_ENTRY_POINT = re.compile(r"\A[A-Za-z_][\w.]*:[A-Za-z_]\w*\Z")


@dataclass(frozen=True, slots=True)
class HookConfig:
    """fleet.json's ``"jitr"`` object: which validation hook decides on JITR certificates.

    - ``{"hook": "allow-list", "allow": ["pump-1", "0a1b..."]}``: device ids (the thing name the
      template gives) or serial numbers (lower-case hex);
    - ``{"hook": "enrollment"}``: an individual enrollment (``geofleet enrollment create
      --individual``) named as the thing, not revoked;
    - ``{"hook": "webhook", "url": "https://...", "caFile"?, "attempts"?, "timeoutS"?,
      "retryS"?}``: an HTTPS POST of the registered event plus the certificate's details; a 2xx
      JSON answer ``{"allow": bool, "thingName"?, "attributes"?}`` decides; a webhook that fails
      ``attempts`` times in a row is asked again every ``retryS`` seconds;
    - ``{"hook": "python", "entryPoint": "module:function"}``: the function gets the same JSON
      and returns the same answer.
    """

    kind: HookKind
    allow: frozenset[str] = frozenset()
    url: str = ""
    ca_file: str = ""
    attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    entry_point: str = ""
    retry_s: float = DEFAULT_RETRY_S
    """How often a hook that could not decide (webhook unreachable) is asked again."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"hook": self.kind.value}
        if self.kind is HookKind.ALLOW_LIST:
            data["allow"] = sorted(self.allow)
        elif self.kind is HookKind.WEBHOOK:
            data.update(url=self.url, attempts=self.attempts, timeoutS=self.timeout_s, retryS=self.retry_s)
            if self.ca_file:
                data["caFile"] = self.ca_file
        elif self.kind is HookKind.PYTHON:
            data["entryPoint"] = self.entry_point
        return data


def parse_hook(raw: Any) -> HookConfig | None:
    """fleet.json's ``"jitr"`` (absent or null: no hook, JITR certificates stay pending until an
    operator activates them); ConfigError with what to write instead."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("'jitr' must be an object such as {\"hook\": \"allow-list\", \"allow\": [...]}")
    try:
        kind = HookKind(str(raw.get("hook")))
    except ValueError:
        raise ConfigError(f"jitr.hook must be one of {[k.value for k in HookKind]}, not {raw.get('hook')!r}"
                          ) from None
    allowed_keys = {HookKind.ALLOW_LIST: {"allow"}, HookKind.ENROLLMENT: set(),
                    HookKind.WEBHOOK: {"url", "caFile", "attempts", "timeoutS", "retryS"},
                    HookKind.PYTHON: {"entryPoint"}}[kind] | {"hook"}
    unknown = sorted(set(raw) - allowed_keys)
    if unknown:
        raise ConfigError(f"jitr: unknown key(s) {unknown} for hook {kind.value!r}; it takes {sorted(allowed_keys)}")
    if kind is HookKind.ALLOW_LIST:
        allow = raw.get("allow")
        if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
            raise ConfigError("jitr.allow must be a list of device ids or serial numbers (strings)")
        if len(allow) > MAX_ALLOW_LIST:
            raise ConfigError(f"jitr.allow holds {len(allow)} entries; at most {MAX_ALLOW_LIST} (use 'enrollment')")
        return HookConfig(kind, allow=frozenset(allow))
    if kind is HookKind.WEBHOOK:
        url = raw.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ConfigError(f"jitr.url must be an https:// URL, not {url!r}")
        attempts = raw.get("attempts", DEFAULT_WEBHOOK_ATTEMPTS)
        timeout = raw.get("timeoutS", DEFAULT_WEBHOOK_TIMEOUT_S)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 20:
            raise ConfigError(f"jitr.attempts must be a whole number from 1 to 20, not {attempts!r}")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 60:
            raise ConfigError(f"jitr.timeoutS must be a number of seconds in (0, 60], not {timeout!r}")
        retry = raw.get("retryS", DEFAULT_RETRY_S)
        if not isinstance(retry, int | float) or isinstance(retry, bool) or not 1 <= retry <= 3600:
            raise ConfigError(f"jitr.retryS must be a number of seconds from 1 to 3600, not {retry!r}")
        ca_file = raw.get("caFile", "")
        if not isinstance(ca_file, str):
            raise ConfigError("jitr.caFile must be a path (relative to the data directory)")
        return HookConfig(kind, url=url, ca_file=ca_file, attempts=attempts, timeout_s=float(timeout),
                          retry_s=float(retry))
    if kind is HookKind.PYTHON:
        entry = raw.get("entryPoint")
        if not isinstance(entry, str) or not _ENTRY_POINT.match(entry):
            raise ConfigError(f"jitr.entryPoint must be 'module:function', not {entry!r}")
        return HookConfig(kind, entry_point=entry)
    return HookConfig(kind)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The hook's decision on one JITR certificate."""

    allow: bool
    reason: str
    thing_name: ThingName | None = None
    """Overrides the template's name (webhook / python answers only)."""
    attributes: dict[str, str] = field(default_factory=dict)
    """Added to the template's attributes."""
    retry: bool = False
    """The hook could not decide (unreachable, failing): ask again later, unlike a refusal."""


def allow_list_verdict(allow: frozenset[str], thing_name: str, serial_number: int) -> Verdict:
    serial = format(serial_number, "x")
    if thing_name in allow or serial in allow:
        return Verdict(True, f"{thing_name if thing_name in allow else serial} is on the allow-list")
    return Verdict(False, f"neither device id {thing_name!r} nor serial {serial} is on the allow-list")


def parse_verdict(answer: Any, source: str) -> Verdict:
    """A webhook's or entry point's answer ``{"allow": bool, "thingName"?, "attributes"?}``;
    anything else is a refusal that says why (never an activation by accident)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
        return Verdict(False, f"{source} answered {str(answer)[:200]!r}, not {{\"allow\": true|false, ...}}")
    if not answer["allow"]:
        return Verdict(False, f"{source} refused: {str(answer.get('reason', 'no reason given'))[:200]}")
    try:
        name = answer.get("thingName")
        thing = check_thing_name(name) if name is not None else None
        attributes = answer.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise InvalidRequest("attributes must be an object of strings")
        attributes = check_attributes(attributes)
    except InvalidRequest as exc:
        return Verdict(False, f"{source} allowed with an invalid answer: {exc.message}")
    return Verdict(True, f"{source} allowed", thing, attributes)
