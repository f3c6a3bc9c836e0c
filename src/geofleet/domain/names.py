"""Names and topics of the AWS IoT device protocol.

Thing and shadow names follow AWS's character rules, which also keeps MQTT wildcards (``+``,
``#``) and ``$`` out of topic levels built from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

from geofleet.domain.errors import InvalidRequest

# Anchored with \A and \Z, never ^ and $: ``$`` also matches before a final newline, so
# "name\n" would pass and a newline would reach topics, ARNs and logs. ASCII only: ``\w`` would
# otherwise admit every Unicode letter, which AWS does not.
_THING_NAME = re.compile(r"\A[a-zA-Z0-9:_-]{1,128}\Z")
_SHADOW_NAME = re.compile(r"\A[a-zA-Z0-9:_-]{1,64}\Z")
_POLICY_NAME = re.compile(r"\A[\w+=,.@-]{1,128}\Z", re.ASCII)
_TYPE_NAME = _THING_NAME

ThingName = NewType("ThingName", str)
"""A thing (device) name that passed ``check_thing_name``: checked once where it enters (an HTTP
path, an MQTT topic, a CLI argument, a provisioning request), then trusted by every service."""

ShadowName = NewType("ShadowName", str)
"""A shadow name that passed ``check_shadow_name`` (``CLASSIC`` for the unnamed shadow)."""

CLASSIC = ShadowName("")
"""The name under which the classic (unnamed) shadow is stored."""


def check_thing_name(name: str) -> ThingName:
    if not _THING_NAME.match(name):
        raise InvalidRequest(
            f"invalid thing name {name!r}: use 1-128 characters from a-z, A-Z, 0-9, ':', '_' and '-'"
        )
    return ThingName(name)


def check_shadow_name(name: str) -> ShadowName:
    if name != CLASSIC and not _SHADOW_NAME.match(name):
        raise InvalidRequest(
            f"invalid shadow name {name!r}: use 1-64 characters from a-z, A-Z, 0-9, ':', '_' and '-'"
        )
    return ShadowName(name)


def check_policy_name(name: str) -> str:
    if not _POLICY_NAME.match(name):
        raise InvalidRequest(
            f"invalid policy name {name!r}: use 1-128 characters from letters, digits and +=,.@_-"
        )
    return name


def check_type_name(name: str) -> str:
    if not _TYPE_NAME.match(name):
        raise InvalidRequest(
            f"invalid thing type name {name!r}: use 1-128 characters from a-z, A-Z, 0-9, ':', '_' and '-'"
        )
    return name


class ShadowOp(StrEnum):
    GET = "get"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    """A device's publish to a shadow request topic, parsed."""

    thing: str
    shadow: str
    op: ShadowOp

    def topic(self, suffix: str) -> str:
        """The response topic ``.../<op>/<suffix>`` (``accepted``, ``rejected``, ``delta``...)."""
        return f"{shadow_prefix(self.thing, self.shadow)}/{self.op}/{suffix}"


def shadow_prefix(thing: str, shadow: str) -> str:
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/name/{shadow}" if shadow else base


_SHADOW_TOPIC = re.compile(
    r"^\$aws/things/(?P<thing>[^/]+)/shadow(?:/name/(?P<shadow>[^/]+))?/(?P<op>get|update|delete)$"
)


def parse_shadow_request(topic: str) -> ShadowRequest | None:
    """Parse a shadow *request* topic; None for anything else (responses included).

    The thing and shadow names are *not* checked here: a request with an invalid name is still
    a request, and the shadow service answers it on its ``/rejected`` topic (as AWS does) instead
    of dropping it. A topic level cannot hold ``/``, and the broker refuses publishes with ``+`` or
    ``#``, so the answer's topic never holds a wildcard; whether the device may receive it is the
    broker's authorization's call, as for any other answer."""
    match = _SHADOW_TOPIC.fullmatch(topic)  # not .match: "$" would let a trailing newline in
    if match is None:
        return None
    return ShadowRequest(match["thing"], match["shadow"] or CLASSIC, ShadowOp(match["op"]))


def presence_topic(event: str, client_id: str) -> str:
    return f"$aws/events/presence/{event}/{client_id}"


def thing_event_topic(thing: str, operation: str) -> str:
    return f"$aws/events/thing/{thing}/{operation}"
