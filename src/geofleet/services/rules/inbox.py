"""The receiving end of ``forward``: what another region's rules sent here.

A batch is checked whole before anything of it is used (a peer is trusted to be a region of
the fleet, not to send well-formed data). Items are taken in order; each one newer than this
region's position for (origin, epoch) is published into the region's own broker, so every
subscriber whose policy allows ``iot:Receive`` gets it, and is run through this region's rules
as *forwarded*: their forward actions do not run, so a message never loops between regions.
The position moves after the items are handled; a batch whose answer was lost comes again and
its items are recognised, so a subscriber sees each message once (at least once if this region
dies between publishing an item and storing its position).

An item about a device whose residency scope, as this region knows it, leaves this region out
is refused (neither published nor run through the rules): the sender dead-letters it, as no
retry would change the answer (``services.rules.residency``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from geofleet.broker.base import Broker
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.limits import MAX_CLIENT_ID_BYTES, payload_problem, topic_name_problem
from geofleet.domain.residency import WrongRegion
from geofleet.domain.rules_sql import Message
from geofleet.services.rules.engine import RulesEngine
from geofleet.services.rules.residency import Scopes, check_received
from geofleet.store.rules_sqlite import RulesStore

MAX_ITEMS = 1000


class ForwardInbox:
    def __init__(self, store: RulesStore, broker: Broker, engine: RulesEngine, scopes: Scopes, region: str) -> None:
        """``scopes``: the devices' residency scopes; ``region``: this region (the receiver)."""
        self._store = store
        self._broker = broker
        self._engine = engine
        self._scopes = scopes
        self._region = region
        self._locks: dict[str, asyncio.Lock] = {}
        self.received = 0
        self.out_of_scope = 0

    async def receive(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        """Take a batch from ``origin`` (already authenticated as that region); answers how far
        it is taken (``through``: the last item's sequence number) and which items were refused
        (``refused``: their seq and why; the sender dead-letters them rather than resend them
        for ever)."""
        epoch, items = _check_batch(body, origin)
        lock = self._locks.setdefault(origin, asyncio.Lock())
        refused: list[dict[str, Any]] = []
        async with lock:  # a retried batch must not run beside the one it repeats
            mark = self._store.mark(origin, epoch)
            for seq, item in items:
                if seq <= mark:
                    continue
                try:
                    message, qos = _check_item(item)
                    check_received(self._scopes, message.client_id, self._region)
                except WrongRegion as error:
                    self.out_of_scope += 1
                    refused.append({"seq": seq, "errorMessage": error.message})
                except InvalidRequest as error:
                    refused.append({"seq": seq, "errorMessage": error.message})
                else:
                    await self._broker.publish(message.topic, message.payload, qos)
                    await self._engine.process(message, forwarded=True)
                    self.received += 1
                with self._store.atomic():
                    self._store.set_mark(origin, epoch, seq)
        return {"through": items[-1][0] if items else 0, "refused": refused}

def _check_batch(body: dict[str, Any], origin: str) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """The batch's frame (refused whole if wrong: the sender is broken, not one message)."""
    epoch, raw = body.get("epoch"), body.get("items")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        raise InvalidRequest(f"forward batch from {origin}: 'epoch' must be a string of 1-64 characters")
    if not isinstance(raw, list) or len(raw) > MAX_ITEMS:
        raise InvalidRequest(f"forward batch from {origin}: 'items' must be a list of at most {MAX_ITEMS}")
    items: list[tuple[int, dict[str, Any]]] = []
    previous = 0
    for index, item in enumerate(raw):
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= previous:
            raise InvalidRequest(f"forward batch from {origin}, item {index}: an object whose 'seq' is an "
                                 "integer above the previous item's")
        previous = seq
        items.append((seq, item))
    return epoch, items


def _check_item(item: dict[str, Any]) -> tuple[Message, int]:
    """One forwarded message, or ``InvalidRequest`` saying why it cannot be published here."""
    topic, qos = item.get("topic"), item.get("qos", 0)
    problem = topic_name_problem(topic) if isinstance(topic, str) else "'topic' must be a string"
    if problem is None and str(topic).startswith("$"):
        problem = f"a forward may not publish on the reserved topic {topic!r}"
    if problem is not None:
        raise InvalidRequest(problem)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise InvalidRequest("'qos' must be 0 or 1")
    try:
        payload = base64.b64decode(str(item.get("payload", "")), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidRequest("'payload' is not base64") from error
    problem = payload_problem(payload)
    if problem is not None:
        raise InvalidRequest(problem)
    client_id, principal, timestamp = item.get("clientId", ""), item.get("principal", ""), item.get("timestamp", 0)
    if not isinstance(client_id, str) or len(client_id.encode()) > MAX_CLIENT_ID_BYTES \
            or not isinstance(principal, str) or len(principal) > 128 \
            or not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise InvalidRequest("'clientId', 'principal' or 'timestamp' is malformed")
    return Message(str(topic), payload, client_id, principal, timestamp), int(qos)
