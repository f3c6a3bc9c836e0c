"""The region's answers to its broker: who may connect, what each connection may do, and what
happens when devices come, go and publish.

Policy decisions are cached per (certificate, client, action, topic) in a bounded LRU (a device
publishing to a new topic each time must not grow memory); any change to a certificate, policy
or attachment clears the cache, and a certificate that stops being ACTIVE
has its live sessions closed at once, as have the devices of a customer CA that stops being ACTIVE.

A device whose residency scope leaves this region out is refused at CONNECT (CONNACK "not
authorized"): its presence, shadow requests and publishes are its data, and would rest here. The
device is its thing when its client id is the thing (with the certificate attached); a client
id that is not a thing is judged by every thing its certificate is attached to, so a device
cannot bring its data here under another name. Sessions already here when the scope moves away
are closed by ``services.residency.Residency``. A shadow request about another thing (a gateway
whose policy allows it) is answered on ``/rejected`` with 403 when that thing's scope leaves
this region out: its shadow may not be written or read here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Protocol

from geofleet.broker.base import Broker, Connection, DisconnectReason
from geofleet.domain.events import presence_payload, thing_payload
from geofleet.domain.jitr import CaStatus
from geofleet.domain.lru import BoundedCache
from geofleet.domain.names import ShadowRequest, parse_shadow_request, presence_topic, thing_event_topic
from geofleet.domain.policy import Action, Principal, is_allowed, is_claim_client_id
from geofleet.domain.records import CertificateStatus, Kind, Record
from geofleet.domain.residency import Scope
from geofleet.domain.shadow import ShadowError, parse_json
from geofleet.region.health import ProbeIdentity
from geofleet.services.presence import PresenceDirectory
from geofleet.services.registry import Registry
from geofleet.services.residency import Residency
from geofleet.services.shadows import ShadowService

log = logging.getLogger(__name__)

DECISION_CACHE_ENTRIES = 4096
"""Room for the hot decisions of a few thousand connections (~260 B an entry, ~1 MB)."""
_SECURITY_KINDS = frozenset({Kind.CERTIFICATE, Kind.POLICY, Kind.POLICY_ATTACHMENT, Kind.THING_PRINCIPAL})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TopicHandler(Protocol):
    """Serves device requests on topics of its own (fleet provisioning's ``$aws/certificates/...``)."""

    def handles(self, topic: str) -> bool: ...

    async def handle(self, connection: Connection, topic: str, payload: bytes) -> None: ...


class CustomerCas(Protocol):
    """Just-in-time registration, as admission sees it (``provisioning.jitr.JustInTime``)."""

    def ca_admits(self, ca_id: str) -> bool: ...

    def first_connect(self, der: bytes, client_id: str, ip: str) -> None: ...

    def pending_connect(self, cert_id: str) -> None: ...


class MessageRules(Protocol):
    """The rules engine, which sees every accepted device publish before it is acknowledged."""

    async def on_device_message(self, client_id: str, principal: str, topic: str, payload: bytes) -> None: ...


class PublishRecorder(Protocol):
    """Keeps devices' accepted publishes durably (the consumer journal): called before the
    PUBACK, so what it keeps is kept for every message a device saw acknowledged."""

    def record(self, client_id: str, topic: str, payload: bytes) -> object: ...


class RegionGate:
    """Built last of the node's parts, with all of them: the broker calls it only once started
    (``Broker.start(gate)``), so the gate can take the broker itself in its constructor."""

    def __init__(self, registry: Registry, shadows: ShadowService, presence: PresenceDirectory, broker: Broker,
                 handlers: Sequence[TopicHandler], recorders: Sequence[PublishRecorder], probe: ProbeIdentity,
                 region: str, account: str, decision_cache_entries: int = DECISION_CACHE_ENTRIES, *,
                 customer_cas: CustomerCas, rules: MessageRules, residency: Residency) -> None:
        self._registry = registry
        self._shadows = shadows
        self._directory = presence
        self._broker = broker
        self._handlers = tuple(handlers)
        self._rules = rules
        self._recorders = tuple(recorders)
        self._probe = probe
        self._region = region
        self._account = account
        self._decisions: BoundedCache[tuple[str, str, str | None, Action, str], bool] = \
            BoundedCache(decision_cache_entries)
        self._version = _now_ms()
        self._tasks: set[asyncio.Task[None]] = set()
        self._customer_cas = customer_cas
        self._residency = residency
        registry.ledger.observe(self._registry_changed)

    @property
    def cached_decisions(self) -> int:
        """How many policy decisions are cached (bounded by ``decision_cache_entries``)."""
        return len(self._decisions)

    # -- the Gate port ---------------------------------------------------------------------

    def admit(self, client_id: str, certificate_der: bytes | None, ip: str) -> Connection | None:
        if certificate_der is None or not client_id:
            return None
        cert_id = hashlib.sha256(certificate_der).hexdigest()
        if (cert_id, client_id) == (self._probe.certificate_id, self._probe.client_id):
            return Connection(client_id, str(uuid.uuid4()), cert_id, None, ip, _now_ms(), internal=True)
        status, ca_id = self._registry.certificates.admission(cert_id)
        if status is not CertificateStatus.ACTIVE:
            log.info("refused %s from %s: certificate %s is %s", client_id, ip, cert_id,
                     status or "not registered")
            if status is None:  # TLS passed: issued by the fleet's PKI or a registered customer CA
                self._customer_cas.first_connect(certificate_der, client_id, ip)
            elif status is CertificateStatus.PENDING_ACTIVATION and ca_id:
                self._customer_cas.pending_connect(cert_id)
            return None
        if ca_id and not self._customer_cas.ca_admits(ca_id):
            log.info("refused %s from %s: certificate %s's CA %s is not ACTIVE", client_id, ip, cert_id, ca_id)
            return None
        thing = client_id if self._registry.principals.is_attached(client_id, cert_id) else None
        elsewhere = self._out_of_scope(thing, cert_id)
        if elsewhere is not None:
            device, scope = elsewhere
            log.info("refused %s from %s: device %s keeps its data in %s only (its residency scope), not in %s",
                     client_id, ip, device, ", ".join(scope.listed()), self._region)
            return None
        connection = Connection(client_id, str(uuid.uuid4()), cert_id, thing, ip, _now_ms())
        if not self.authorize(connection, Action.CONNECT, client_id):
            log.info("refused %s from %s: no policy of certificate %s allows iot:Connect", client_id, ip, cert_id)
            return None
        return connection

    def _out_of_scope(self, thing: str | None, cert_id: str) -> tuple[str, Scope] | None:
        """The device (and its scope) that may not be here: the connection's thing, or without
        one, any thing the certificate is attached to; None when every one may."""
        for device in [thing] if thing is not None else self._registry.principals.things_of(cert_id):
            scope = self._residency.scope(device)
            if not scope.includes(self._region):
                return device, scope
        return None

    def authorize(self, connection: Connection, action: Action, topic: str) -> bool:
        if connection.internal:
            return topic == self._probe.topic and action is not Action.CONNECT
        key = (connection.certificate_id, connection.client_id, connection.thing_name, action, topic)
        decision = self._decisions.get(key)
        if decision is None:
            principal = Principal(connection.client_id, connection.thing_name, self._region, self._account,
                                  connection.certificate_id)
            policies = self._registry.policies.effective(connection.certificate_id)
            decision = is_allowed(policies, principal, action, topic)
            self._decisions.put(key, decision)
        return decision

    async def connected(self, connection: Connection) -> None:
        if connection.internal:
            return
        if not is_claim_client_id(connection.client_id):
            self._directory.connected(connection)
        await self._presence("connected", connection)

    async def disconnected(self, connection: Connection) -> None:
        if connection.internal:
            return
        if not is_claim_client_id(connection.client_id):
            self._directory.disconnected(connection)
        await self._presence("disconnected", connection)

    async def message(self, connection: Connection, topic: str, payload: bytes) -> None:
        if not connection.internal:  # the health probe's publishes are nobody's data
            # before the PUBACK: what the journal and durable rule actions keep is committed by the
            # time this returns
            for recorder in self._recorders:
                recorder.record(connection.client_id, topic, payload)
            await self._rules.on_device_message(connection.client_id, connection.certificate_id, topic, payload)
        if topic.startswith("$aws/things/"):
            request = parse_shadow_request(topic)
            if request is not None:
                if self._residency.here(request.thing):
                    await self._shadows.handle(request, payload)
                else:
                    await self._refuse_elsewhere(request, payload)
        else:
            for handler in self._handlers:
                if handler.handles(topic):
                    await handler.handle(connection, topic, payload)
                    return

    async def _refuse_elsewhere(self, request: ShadowRequest, payload: bytes) -> None:
        """``/rejected`` (AWS's 403) for a shadow request about a thing whose data may not rest here."""
        try:
            _, token = parse_json(payload)
        except ShadowError:
            token = None
        where = ", ".join(self._residency.scope(request.thing).listed())
        error = ShadowError(403, f"thing {request.thing}'s shadows rest only in {where} (its residency scope), "
                                 f"not in {self._region}: connect there", token)
        await self._publish(request.topic("rejected"), error.payload(int(time.time())))

    # -- events ----------------------------------------------------------------------------

    async def _presence(self, event: str, connection: Connection) -> None:
        payload = presence_payload(
            event,
            client_id=connection.client_id,
            timestamp_ms=_now_ms(),
            session_id=connection.session_id,
            principal=connection.certificate_id,
            ip=connection.ip,
            version=self._next_version(),
            disconnect_reason=connection.reason.value if connection.reason else None,
        )
        await self._publish(presence_topic(event, connection.client_id), payload)

    def _next_version(self) -> int:
        # Monotonic across restarts: never below the wall clock in milliseconds.
        self._version = max(self._version + 1, _now_ms())
        return self._version

    async def _publish(self, topic: str, payload: dict[str, object]) -> None:
        await self._broker.publish(topic, json.dumps(payload, separators=(",", ":")).encode())

    def _registry_changed(self, previous: Record | None, record: Record) -> None:
        if record.kind in _SECURITY_KINDS:
            self._decisions.clear()
        if record.kind is Kind.CERTIFICATE and (record.body or {}).get("status") != CertificateStatus.ACTIVE:
            self._spawn(self._cut_certificate(record.key))
        if record.kind is Kind.THING:
            self._spawn(self._thing_event(previous, record))
        if record.kind is Kind.CA_CERTIFICATE and (record.body or {}).get("status") != CaStatus.ACTIVE:
            self._spawn(self._cut_ca(record.key))

    async def _cut_certificate(self, cert_id: str) -> None:
        closed = await self._broker.disconnect(lambda c: c.certificate_id == cert_id, DisconnectReason.AUTH_ERROR)
        if closed:
            log.info("closed %d session(s) of certificate %s: it is no longer ACTIVE", closed, cert_id)

    async def _cut_ca(self, ca_id: str) -> None:
        """A customer CA set INACTIVE or REVOKED (here or in another region): its devices'
        sessions end everywhere, as each region hears of it."""
        issued = {r.key for r in self._registry.ca_certificates.certificates_of(ca_id)}
        if not issued:
            return
        closed = await self._broker.disconnect(lambda c: c.certificate_id in issued, DisconnectReason.AUTH_ERROR)
        if closed:
            log.info("closed %d session(s) of devices of CA %s: it is no longer ACTIVE", closed, ca_id)

    async def _thing_event(self, previous: Record | None, record: Record) -> None:
        alive_before = previous is not None and not previous.deleted
        if record.deleted:
            if not alive_before:
                return
            operation, body = "DELETED", (previous.body if previous else None) or {}
        else:
            operation, body = ("UPDATED" if alive_before else "CREATED"), record.body or {}
        payload = thing_payload(operation, body, event_id=uuid.uuid4().hex, timestamp_ms=_now_ms(),
                                account=self._account)
        await self._publish(thing_event_topic(record.key, operation.lower()), payload)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


