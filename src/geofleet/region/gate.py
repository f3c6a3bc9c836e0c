"""The region's answers to its broker: who may connect, what each connection may do, and what
happens when devices come, go and publish.

Policy decisions are cached per (certificate, client, action, topic) in a bounded LRU (a device
publishing to a new topic each time must not grow memory); any change to a certificate, policy
or attachment clears the cache, and a certificate that stops being ACTIVE
has its live sessions closed at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable

from geofleet.broker.base import Broker, Connection, DisconnectReason
from geofleet.domain.events import presence_payload, thing_payload
from geofleet.domain.lru import BoundedCache
from geofleet.domain.names import parse_shadow_request, presence_topic, thing_event_topic
from geofleet.domain.policy import Action, Principal, is_allowed, is_claim_client_id
from geofleet.domain.records import CertificateStatus, Kind, Record
from geofleet.provisioning.fleet_mqtt import FleetProvisioning
from geofleet.region.presence import PresenceDirectory
from geofleet.region.registry import Registry
from geofleet.region.shadows import ShadowService

log = logging.getLogger(__name__)

DECISION_CACHE_ENTRIES = 4096
"""Room for the hot decisions of a few thousand connections (~260 B an entry, ~1 MB)."""
_SECURITY_KINDS = frozenset({Kind.CERTIFICATE, Kind.POLICY, Kind.POLICY_ATTACHMENT, Kind.THING_PRINCIPAL})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class RegionGate:
    def __init__(self, registry: Registry, shadows: ShadowService, region: str, account: str,
                 decision_cache_entries: int = DECISION_CACHE_ENTRIES) -> None:
        self._registry = registry
        self._shadows = shadows
        self._region = region
        self._account = account
        self._decisions: BoundedCache[tuple[str, str, str | None, Action, str], bool] = \
            BoundedCache(decision_cache_entries)
        self._version = _now_ms()
        self._tasks: set[asyncio.Task[None]] = set()
        self.broker: Broker | None = None
        self.fleet_provisioning: FleetProvisioning | None = None
        self.presence: PresenceDirectory | None = None
        self.probe: tuple[str, str, str] | None = None
        """(certificate id, client id, topic) of the region's health probe."""
        registry.observe(self._registry_changed)

    @property
    def cached_decisions(self) -> int:
        """How many policy decisions are cached (bounded by ``decision_cache_entries``)."""
        return len(self._decisions)

    # -- the Gate port ---------------------------------------------------------------------

    def admit(self, client_id: str, certificate_der: bytes | None, ip: str) -> Connection | None:
        if certificate_der is None or not client_id:
            return None
        cert_id = hashlib.sha256(certificate_der).hexdigest()
        if self.probe is not None and (cert_id, client_id) == self.probe[:2]:
            return Connection(client_id, str(uuid.uuid4()), cert_id, None, ip, _now_ms(), internal=True)
        status = self._registry.certificate_status(cert_id)
        if status is not CertificateStatus.ACTIVE:
            log.info("refused %s from %s: certificate %s is %s", client_id, ip, cert_id,
                     status or "not registered")
            return None
        thing = client_id if self._registry.is_attached(client_id, cert_id) else None
        connection = Connection(client_id, str(uuid.uuid4()), cert_id, thing, ip, _now_ms())
        if not self.authorize(connection, Action.CONNECT, client_id):
            log.info("refused %s from %s: no policy of certificate %s allows iot:Connect", client_id, ip, cert_id)
            return None
        return connection

    def authorize(self, connection: Connection, action: Action, topic: str) -> bool:
        if connection.internal:
            return self.probe is not None and topic == self.probe[2] and action is not Action.CONNECT
        key = (connection.certificate_id, connection.client_id, connection.thing_name, action, topic)
        decision = self._decisions.get(key)
        if decision is None:
            principal = Principal(connection.client_id, connection.thing_name, self._region, self._account,
                                  connection.certificate_id)
            policies = self._registry.effective_policies(connection.certificate_id)
            decision = is_allowed(policies, principal, action, topic)
            self._decisions.put(key, decision)
        return decision

    async def connected(self, connection: Connection) -> None:
        if connection.internal:
            return
        if self.presence is not None and not is_claim_client_id(connection.client_id):
            self.presence.connected(connection)
        await self._presence("connected", connection)

    async def disconnected(self, connection: Connection) -> None:
        if connection.internal:
            return
        if self.presence is not None and not is_claim_client_id(connection.client_id):
            self.presence.disconnected(connection)
        await self._presence("disconnected", connection)

    async def message(self, connection: Connection, topic: str, payload: bytes) -> None:
        if topic.startswith("$aws/things/"):
            request = parse_shadow_request(topic)
            if request is not None:
                await self._shadows.handle(request, payload)
        elif topic.startswith(("$aws/certificates/", "$aws/provisioning-templates/")) \
                and self.fleet_provisioning is not None and self.fleet_provisioning.handles(topic):
            await self.fleet_provisioning.handle(connection, topic, payload)

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
        if self.broker is not None:
            await self.broker.publish(topic, json.dumps(payload, separators=(",", ":")).encode())

    def _registry_changed(self, previous: Record | None, record: Record) -> None:
        if record.kind in _SECURITY_KINDS:
            self._decisions.clear()
        if record.kind is Kind.CERTIFICATE and (record.body or {}).get("status") != CertificateStatus.ACTIVE:
            self._spawn(self._cut_certificate(record.key))
        if record.kind is Kind.THING:
            self._spawn(self._thing_event(previous, record))

    async def _cut_certificate(self, cert_id: str) -> None:
        if self.broker is not None:
            closed = await self.broker.disconnect(lambda c: c.certificate_id == cert_id, DisconnectReason.AUTH_ERROR)
            if closed:
                log.info("closed %d session(s) of certificate %s: it is no longer ACTIVE", closed, cert_id)

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


