"""One region node: the store, clock, registry, shadow service, gate, broker and HTTP API of a
region, started and stopped together in one asyncio program."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from typing import Any

import uvicorn
from fastapi import APIRouter

from geofleet.broker.amqtt_broker import EmbeddedBroker
from geofleet.broker.base import DisconnectReason
from geofleet.config import DataDir, FleetConfig, RegionConfig, RegionPaths, tombstone_grace_s
from geofleet.domain.errors import NotFound
from geofleet.domain.hlc import Clock
from geofleet.domain.horizon import TombstoneHorizon
from geofleet.domain.jitr import DEFAULT_RETRY_S, registration_code
from geofleet.domain.policy import builtin_policies, builtin_upgrade
from geofleet.domain.rules import FleetContext
from geofleet.domain.throttle import RateLimiter
from geofleet.pki.files import private_dir
from geofleet.pki.fleet import region_authority
from geofleet.provisioning.fleet_mqtt import FleetProvisioning
from geofleet.provisioning.geolocate import Geolocator
from geofleet.provisioning.jitr import JustInTime
from geofleet.provisioning.jitr_hooks import build_hook
from geofleet.provisioning.service import Provisioner
from geofleet.region.api import create_app
from geofleet.region.concierge import Concierge
from geofleet.region.gate import RegionGate
from geofleet.region.health import BrokerProbe, Health
from geofleet.region.instance_lock import InstanceLock
from geofleet.region.routes import ca_certificates as ca_certificates_routes
from geofleet.region.routes import certificates as certificates_routes
from geofleet.region.routes import concierge as concierge_routes
from geofleet.region.routes import consumers as consumers_routes
from geofleet.region.routes import dashboard as dashboard_routes
from geofleet.region.routes import delivery as delivery_routes
from geofleet.region.routes import enrollment as enrollment_routes
from geofleet.region.routes import health as health_routes
from geofleet.region.routes import policies as policies_routes
from geofleet.region.routes import presence as presence_routes
from geofleet.region.routes import provisioning as provisioning_routes
from geofleet.region.routes import replication as replication_routes
from geofleet.region.routes import rules as rules_routes
from geofleet.region.routes import shadows as shadows_routes
from geofleet.region.routes import stream as stream_routes
from geofleet.region.routes import thing_types as thing_types_routes
from geofleet.region.routes import things as things_routes
from geofleet.region.routes.access import AdminAccess
from geofleet.replication.service import Replication
from geofleet.services.journal import Journal
from geofleet.services.presence import PresenceDirectory
from geofleet.services.registry import Registry
from geofleet.services.residency import Residency
from geofleet.services.rules.actions import builtin_kinds
from geofleet.services.rules.admin import RuleAdmin
from geofleet.services.rules.aws_actions import AwsClients, aws_kinds, aws_senders, missing_aws_kinds
from geofleet.services.rules.engine import RulesEngine
from geofleet.services.rules.inbox import ForwardInbox
from geofleet.services.rules.senders import RetryPolicy, RuleSenders
from geofleet.services.shadows import ShadowService
from geofleet.store.journal import SqliteJournal
from geofleet.store.rules_sqlite import RulesStore
from geofleet.store.sealing import Sealer
from geofleet.store.sqlite import SqliteStore
from geofleet.web import EmbeddedServer

log = logging.getLogger(__name__)


class RegionNode:
    def __init__(self, data: DataDir, name: str) -> None:
        fleet = data.config()
        self.config: RegionConfig = fleet.region(name)
        self.data = data
        paths = data.region(name)
        # First of all: a second process for this region must change nothing of the running one.
        self._lock = InstanceLock.acquire(paths.lock, name)
        try:
            self._build(data, fleet, name, paths)
        except BaseException:
            self._lock.release()
            raise

    def _build(self, data: DataDir, fleet: FleetConfig, name: str, paths: RegionPaths) -> None:
        private_dir(data.root)
        private_dir(paths.root)
        self.store = SqliteStore(paths.store, Sealer(data.fleet_secret()))
        self.clock = Clock(start=self.store.last_hlc())
        authority = region_authority(data, name)
        self.registry = Registry(self.store, self.clock, name, fleet.account, authority,
                                 fleet.residency_global_attributes)
        self.journal = Journal(SqliteJournal(paths.journal, name), self.registry.ledger)
        self.broker = EmbeddedBroker(
            self.config.host, self.config.mqtt_port, paths.server_chain, paths.server_key, data.trust_bundle
        )
        horizon = TombstoneHorizon(tombstone_grace_s())
        self.shadows = ShadowService(self.store, self.clock, name, self.broker.publish, horizon)
        self.presence = PresenceDirectory(self.store, self.registry.ledger, self.clock, name, self.broker)
        self._ensure_builtin_policies()
        ended = self.presence.forget_own_sessions()
        if ended:
            log.info("region %s: %d device session(s) ended with the previous process", name, ended)
        probe = BrokerProbe(authority, self.config, data.trust_bundle, paths.root)
        self.rules_store = RulesStore(paths.root / "rules.db")
        self.residency = Residency(self.store, self.registry.ledger, name, [self.journal, self.rules_store],
                                   self._disconnect)
        regions = frozenset(r.name for r in fleet.regions)
        self.rules = RulesEngine(self.registry.ledger, self.rules_store, self.broker,
                                 {**builtin_kinds(regions, self.residency), **aws_kinds()}, name, self.residency)
        self.rule_admin = RuleAdmin(self.registry.ledger, FleetContext(regions, name, missing_aws_kinds()))
        forward_inbox = ForwardInbox(self.rules_store, self.broker, self.rules, self.residency, name)
        self.replication = Replication(data, fleet, name, self.store, self.registry.ledger, self.shadows,
                                       self.residency, lambda: self.health.local(), horizon, forward_inbox)
        aws_policy = RetryPolicy.from_env(os.environ, "GEOFLEET_RULES_AWS")
        self.rule_senders = RuleSenders(
            sorted(self.replication.peers), self.rules_store, self.rules, self.replication.call_peer,
            RetryPolicy.from_env(os.environ),
            others=aws_senders(self.rules_store, self.rules, aws_policy, AwsClients.from_env(os.environ, aws_policy)),
            scopes=self.residency)
        self.health = Health(name, self.store, self.broker, probe, list(self.replication.peers),
                             self.replication.get_peer, self.replication.failing_links)
        self.concierge = Concierge(fleet, name, self.registry.things, self.health)
        geoip = (data.root / fleet.geoip_database) if fleet.geoip_database else None
        locator = Geolocator(geoip)
        self.provisioner = Provisioner(
            fleet, name, self.registry, self.store, authority, data.root_ca.read_text(),
            locator.locate, self._guard, self.health,
        )
        self.fleet_provisioning = FleetProvisioning(
            self.provisioner, self.registry.certificates, self.registry.principals, self.store, authority, self.broker,
            locator.locate,
            token_ttl_s=fleet.claim_token_ttl_s, limiter=RateLimiter(fleet.claim_requests_per_minute),
            max_pending=fleet.claim_max_pending)
        self.jitr = JustInTime(fleet, name, self.registry, self.provisioner.guard, self.broker.publish,
                               self.broker.trust, build_hook(fleet.jitr, data.root, self.registry.enrollments),
                               fleet.jitr.retry_s if fleet.jitr is not None else DEFAULT_RETRY_S)
        self._registration_code = registration_code(data.fleet_secret())
        self.gate = RegionGate(self.registry, self.shadows, self.presence, self.broker, [self.fleet_provisioning],
                               [self.journal], probe.identity, name, fleet.account, customer_cas=self.jitr,
                               rules=self.rules, residency=self.residency)
        access = AdminAccess(data.token())
        app = create_app(name, access, [*self._routers(name, access), dashboard_routes.router(name, fleet, access)])
        self._http = EmbeddedServer(uvicorn.Config(
            app, host=self.config.host, port=self.config.http_port, log_level="warning",
            ssl_certfile=str(paths.server_chain), ssl_keyfile=str(paths.server_key), lifespan="off",
            access_log=False, proxy_headers=False,  # X-Forwarded-For: only geofleet's trusted_proxies decide
        ))
        self._stop = asyncio.Event()
        self._background: set[asyncio.Future[int]] = set()

    def _routers(self, name: str, access: AdminAccess) -> list[APIRouter]:
        """Every HTTP resource of the node, in the order the app matches them."""
        return [
            health_routes.router(self.health),
            concierge_routes.router(self.concierge),
            presence_routes.router(name, self.presence, self.registry.things, self.residency, self.health, access),
            delivery_routes.router(name, self.broker, self.residency, access),
            stream_routes.router(name, self.broker, access),
            things_routes.router(name, self.registry, self.residency, access),
            thing_types_routes.router(self.registry, access),
            certificates_routes.router(self.registry, access),
            ca_certificates_routes.router(self.registry.ca_certificates, self._registration_code, access),
            policies_routes.router(self.registry, access),
            shadows_routes.router(self.shadows, self.residency, access),
            provisioning_routes.router(self.provisioner, access),
            enrollment_routes.router(self.registry, access),
            replication_routes.router(self.replication, access, [self.journal.metrics]),
            rules_routes.router(self.rule_admin, self.rule_senders, self.rules_store, access),
            consumers_routes.router(name, self.registry.consumers, self.journal, access),
        ]

    def _disconnect(self, device: str) -> None:
        """Close a device's sessions here (it no longer may be here: its residency scope moved):
        its thing's, and any its certificates opened under another client id (the gate refuses
        both from now on)."""
        certificates = set(self.registry.principals.of_thing(device))
        task = asyncio.ensure_future(self.broker.disconnect(
            lambda c: c.client_id == device or c.certificate_id in certificates, DisconnectReason.FORBIDDEN_ACCESS))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _guard(self, owner: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.replication.call_peer(owner, f"/v1/guard/{action}", body)

    def _ensure_builtin_policies(self) -> None:
        for name, document in builtin_policies().items():
            try:
                current = self.registry.policies.get(name)
            except NotFound:
                self.registry.policies.create(name, json.dumps(document))
                continue
            upgrade = builtin_upgrade(name, json.loads(current["policyDocument"]))
            if upgrade is not None:
                log.info("region %s: policy %s replaced by this version's", self.config.name, name)
                self.registry.policies.replace(name, json.dumps(upgrade))

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM or ``stop()``; then close everything cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self.broker.start(self.gate)
        await self.replication.start()
        await self.health.start()
        await self.journal.start()
        self.fleet_provisioning.start()
        self.jitr.start()
        self.rule_senders.start()
        http = asyncio.create_task(self._http.serve())
        while not self._http.started and not http.done():
            await asyncio.sleep(0.01)
        if http.done():
            await self.jitr.stop()
            await self.rule_senders.stop()
            await self.journal.stop()
            await self.fleet_provisioning.stop()
            await self.health.stop()
            await self.replication.stop()
            await self.broker.stop()
            raise RuntimeError(f"region {self.config.name}: HTTP API failed to start on port {self.config.http_port}")
        log.info("region %s ready: mqtts://%s:%d %s", self.config.name, self.config.host,
                 self.config.mqtt_port, self.config.http_url)
        try:
            await self._stop.wait()
        finally:
            self._http.should_exit = True
            await self.journal.stop()
            await http
            await self.jitr.stop()
            await self.rule_senders.stop()
            await self.fleet_provisioning.stop()
            await self.health.stop()
            await self.replication.stop()
            await self.broker.stop()
            self.store.close()
            self.rules_store.close()
            self.journal.close()
            log.info("region %s stopped", self.config.name)
            self._lock.release()

    def stop(self) -> None:
        self._stop.set()
