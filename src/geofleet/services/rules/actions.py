"""What a rule's actions do, kind by kind: the extension point of the rules engine.

An action kind is either *immediate* (``republish``: done while the device's message is being
routed) or *durable* (``forward``, ``http``): the engine writes what it must deliver into the
outbox, in the transaction committed before the device's PUBACK, and a sender delivers it later,
as often as needed. Each kind says which (``channel``) and how to turn a matched message into
what is delivered (``prepare``). Adding ``sqs`` or ``sns`` is one ``ActionKind`` here, its field
check in ``domain.rules.ACTION_KINDS`` and, for a durable kind, a sender that drains its channel.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.rules_sql import Message, substitute
from geofleet.services.rules.residency import Scopes, check_forward

MAX_REPUBLISH_HOPS = 4
"""How many republishes one device message may go through (rule A republishes to rule B's topic,
which republishes...): AWS refuses a rule that republishes onto its own FROM topic, and this
bound ends any longer cycle between rules."""


@dataclass(frozen=True, slots=True)
class Matched:
    """One message a rule's WHERE accepted, with what its SELECT produced."""

    rule: str
    message: Message
    output: bytes
    error_action: Mapping[str, Any] | None
    hops: int = 0
    forwarded: bool = False
    """It came from another region's forward action: forward actions do not run (no loops)."""


def encode_output(output: dict[str, Any] | bytes) -> bytes:
    return output if isinstance(output, bytes) else json.dumps(output, separators=(",", ":")).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ActionKind(Protocol):
    kind: str

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        """The outbox channel of a durable kind; None for an immediate one."""
        ...

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        """What is delivered (templates filled for this message); raises ``GeofleetError`` when it
        cannot be (the rule's errorAction then runs)."""
        ...


Publish = Callable[[str, bytes, int], Awaitable[None]]


class Republish:
    kind = "republish"

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        return None

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        return {"topic": substitute(str(fields["topic"]), matched.message), "qos": int(fields.get("qos", 0))}


class Forward:
    """Sends the message to another region's broker (and rules); only to a region of the
    publishing device's residency scope (``services.rules.residency``)."""

    kind = "forward"

    def __init__(self, regions: frozenset[str], scopes: Scopes) -> None:
        self._regions = regions
        self._scopes = scopes

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        return f"forward:{fields['region']}"

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        if fields.get("region") not in self._regions:  # a rule replicated from a region configured otherwise
            raise InvalidRequest(f"{fields.get('region')!r} is not a region this node forwards to")
        message = matched.message
        check_forward(self._scopes, message.client_id, str(fields["region"]))
        topic = substitute(str(fields["topic"]), message) if fields.get("topic") else message.topic
        return {"rule": matched.rule, "topic": topic, "qos": int(fields.get("qos", 0)),
                "payload": b64(matched.output), "clientId": message.client_id, "principal": message.principal,
                "timestamp": message.timestamp_ms}


class Http:
    kind = "http"

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        return "http"

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        message = matched.message
        return {"rule": matched.rule, "url": fields["url"], "headers": list(fields.get("headers") or []),
                "payload": b64(matched.output), "topic": message.topic, "clientId": message.client_id,
                "original": b64(message.payload), "errorAction": matched.error_action}


def builtin_kinds(regions: frozenset[str], scopes: Scopes) -> dict[str, ActionKind]:
    """Every action kind of a node whose fleet has ``regions`` (``scopes``: its devices' residency)."""
    kinds: list[ActionKind] = [Republish(), Forward(regions, scopes), Http()]
    return {k.kind: k for k in kinds}
