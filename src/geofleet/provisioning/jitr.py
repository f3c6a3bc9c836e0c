"""Just-in-time registration in any region: a device whose certificate was issued by a
registered customer CA connects for the first time, wherever it is.

The region it reaches (any region: every broker trusts every registered CA) refuses the
connection, as AWS does, and registers the certificate once for the whole fleet:

1. the provision-once guard of ``jitr:<certificateId>``, claimed at the key's owner region over
   the peer channel, makes two regions seeing the first connect at once give ONE registration;
2. the winner writes the certificate PENDING_ACTIVATION under its CA (``ref`` = the CA id, so
   replicas apply it only after the CA record) and publishes
   ``$aws/events/certificates/registered/<caCertificateId>``;
3. the guard key's owner region runs the validation hook when the pending record reaches it
   (written there or replicated in), and again at start-up for any it owns (crash recovery);
   on allow it activates the certificate and creates the thing from the CA's template with its
   policy and principal, in one transaction. Everything replicates, so the device's next
   connect succeeds in every region: no second JITR after a failover.

A pending certificate that connects again is refused without a second registration; in the
owner region it also re-runs a hook that failed earlier (at most every ``RETRY_HOOK_S``), and
a hook that could not decide (a webhook down) is asked again every ``retry_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from cryptography import x509

from geofleet.config import FleetConfig
from geofleet.domain.endpoints import HOME_ATTRIBUTE, REGIONS_ATTRIBUTE, failover_order
from geofleet.domain.errors import GeofleetError
from geofleet.domain.geo import Place
from geofleet.domain.guard import DEFAULT_STALE_MS
from geofleet.domain.jitr import (
    GUARD_PREFIX,
    AutoRegistration,
    CaStatus,
    RegistrationTemplate,
    Verdict,
    parse_template,
    registered_event,
    registered_topic,
    thing_name_for,
)
from geofleet.domain.json_types import Json
from geofleet.domain.lru import BoundedCache
from geofleet.domain.names import ThingName
from geofleet.domain.placement import owner
from geofleet.domain.records import CertificateStatus, Kind, Record
from geofleet.pki.ca import certificate_id, load_cert
from geofleet.pki.customer_ca import common_name
from geofleet.provisioning.jitr_hooks import Hook
from geofleet.services.registry import Registry

log = logging.getLogger(__name__)

GuardCall = Callable[[str, str, Json], Awaitable[Json]]
"""(key, action, body) -> the guard's answer at the key's owner region (``Provisioner.guard``)."""
Publish = Callable[[str, bytes], Awaitable[None]]

MAX_IN_FLIGHT = 256
"""First connects registered at once by one region; more are refused quietly (devices retry),
so a flood of new certificates cannot grow memory or tasks without bound."""
RETRY_HOOK_S = 30.0
"""A pending certificate reconnecting in the owner region re-runs the hook at most this often."""
MAX_TRACKED = 10_000
"""Certificates whose hook timing and undecided state are remembered (bounded memory; a restart
re-runs the hook for every pending certificate anyway)."""


class JustInTime:
    def __init__(self, fleet: FleetConfig, region: str, registry: Registry, guard: GuardCall, publish: Publish,
                 trust: Callable[[str], None], hook: Hook | None, retry_s: float) -> None:
        """``retry_s``: how often a hook that could not decide is asked again."""
        self._fleet, self._region, self._registry = fleet, region, registry
        self._cas = registry.ca_certificates
        self._guard, self._publish, self._trust, self._hook = guard, publish, trust, hook
        self._regions = [r.name for r in fleet.regions]
        self._registering: set[str] = set()
        self._validating: set[str] = set()
        self._hook_tried: BoundedCache[str, float] = BoundedCache(MAX_TRACKED)
        self._undecided: set[str] = set()
        self._retry_s = retry_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._trusted: set[str] = set()
        for record in registry.ledger.records(Kind.CA_CERTIFICATE):
            self._trust_ca(record)
        registry.ledger.observe(self._changed)

    # -- admission (called by the gate, synchronously, for every refused-so-far certificate) --

    def ca_admits(self, ca_id: str) -> bool:
        """A certificate registered under a customer CA connects only while that CA is ACTIVE."""
        return self._cas.status(ca_id) is CaStatus.ACTIVE

    def first_connect(self, der: bytes, client_id: str, ip: str) -> None:
        """An unregistered certificate passed TLS: if a registered, ACTIVE, auto-registering CA
        issued it, register it (in the background: the connection is refused either way)."""
        cert_id = certificate_id(der)
        if cert_id in self._registering or len(self._registering) >= MAX_IN_FLIGHT:
            return
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return
        ca = self._cas.issuer_of(cert)
        if ca is None:
            log.info("refused %s from %s: certificate %s is not registered and no registered CA issued it",
                     client_id, ip, cert_id)
            return
        body = ca.body or {}
        if body.get("status") != CaStatus.ACTIVE or body.get("autoRegistrationStatus") != AutoRegistration.ENABLE:
            log.info("refused %s from %s: certificate %s's CA %s is %s with auto-registration %s", client_id, ip,
                     cert_id, ca.key, body.get("status"), body.get("autoRegistrationStatus"))
            return
        self._registering.add(cert_id)
        self._spawn(self._register(cert, cert_id, ca.key), lambda: self._registering.discard(cert_id))

    def pending_connect(self, cert_id: str) -> None:
        """A PENDING_ACTIVATION certificate connected again: no second registration; in the
        hook's region, a hook that failed before is tried again (rate-limited)."""
        tried = self._hook_tried.get(cert_id)
        if self._owns(cert_id) and (tried is None or time.monotonic() - tried >= RETRY_HOOK_S):
            self._validate_later(cert_id)

    async def _register(self, cert: x509.Certificate, cert_id: str, ca_id: str) -> None:
        key = GUARD_PREFIX + cert_id
        claim = {"fingerprint": cert_id, "staleMs": DEFAULT_STALE_MS}
        try:
            answer = await self._guard(key, "claim", claim)
        except GeofleetError as exc:
            log.warning("JITR of certificate %s waits: %s (the device's next connect tries again)", cert_id, exc)
            return
        if answer.get("state") != "claimed":
            return  # another region registers it (busy) or did (done): its record is on the way
        try:
            if self._registry.certificates.status(cert_id) is None:
                self._registry.certificates.register(
                    cert, CertificateStatus.PENDING_ACTIVATION,
                    {"caCertificateId": ca_id, "jitrRegion": self._region}, ref=ca_id)
        except BaseException:
            await self._guard(key, "release", claim)
            raise
        await self._guard(key, "complete", {**claim, "answer": {"certificateId": cert_id}})
        log.info("JITR: registered certificate %s of CA %s as PENDING_ACTIVATION", cert_id, ca_id)
        now_ms = time.time_ns() // 1_000_000
        event = registered_event(cert_id, ca_id, self._fleet.account, now_ms, now_ms // 1000)
        await self._publish(registered_topic(ca_id), _json(event))

    # -- the validation hook (owner region of the guard key only) -------------------------

    def start(self) -> None:
        """Crash recovery: run the hook for every pending JITR certificate this region owns."""
        for ca in self._registry.ledger.records(Kind.CA_CERTIFICATE):
            for record in self._cas.certificates_of(ca.key):
                if self._pending_here(record):
                    self._validate_later(record.key)
        if self._hook is not None:
            self._spawn(self._retry_undecided_forever(), lambda: None)

    async def _retry_undecided_forever(self) -> None:
        """Ask the hook again about certificates it could not decide (a webhook down for longer
        than its attempts): a device must not stay pending for good because its hook was away."""
        while True:
            await asyncio.sleep(self._retry_s)  # a period between rounds, not a wait for state
            undecided, self._undecided = self._undecided, set()
            for cert_id in undecided:
                self._validate_later(cert_id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _changed(self, previous: Record | None, record: Record) -> None:
        if record.kind is Kind.CA_CERTIFICATE:
            self._trust_ca(record)
        elif record.kind is Kind.CERTIFICATE and self._pending_here(record) and \
                (previous is None or previous.deleted):
            self._validate_later(record.key)

    def _trust_ca(self, record: Record) -> None:
        if record.deleted or record.key in self._trusted:
            return
        self._trusted.add(record.key)
        self._trust(str((record.body or {})["certificatePem"]))

    def _owns(self, cert_id: str) -> bool:
        return owner(GUARD_PREFIX + cert_id, self._regions) == self._region

    def _pending_here(self, record: Record) -> bool:
        body = record.body or {}
        return (bool(record.ref) and body.get("status") == CertificateStatus.PENDING_ACTIVATION
                and self._owns(record.key))

    def _validate_later(self, cert_id: str) -> None:
        if self._hook is None or cert_id in self._validating:
            return
        self._validating.add(cert_id)
        self._hook_tried.put(cert_id, time.monotonic())
        self._spawn(self._validate(cert_id), lambda: self._validating.discard(cert_id))

    async def _validate(self, cert_id: str) -> None:
        assert self._hook is not None
        record = self._registry.ledger.live(Kind.CERTIFICATE, cert_id)
        if record is None or not self._pending_here(record):
            return
        body = record.body or {}
        ca = self._cas.live(record.ref)
        if ca is None or (ca.body or {}).get("status") != CaStatus.ACTIVE:
            log.warning("JITR: certificate %s stays pending: its CA %s is not ACTIVE", cert_id, record.ref)
            return
        cert = load_cert(str(body["certificatePem"]))
        template = parse_template((ca.body or {}).get("registrationConfig"), "")
        try:
            default_name: str = thing_name_for(template, common_name(cert), cert.serial_number)
        except GeofleetError as exc:
            default_name = ""
            log.info("JITR: certificate %s: the template names no thing (%s); the hook may name one", cert_id, exc)
        request: Json = {
            **registered_event(cert_id, record.ref, self._fleet.account, time.time_ns() // 1_000_000,
                               int(body.get("creationDate", 0))),
            "thingName": default_name, "commonName": common_name(cert), "serialNumber": format(cert.serial_number, "x"),
            "region": body.get("jitrRegion", self._region), "validatingRegion": self._region,
            "certificatePem": body["certificatePem"],
        }
        verdict = await self._hook.decide(request)
        thing = verdict.thing_name or default_name
        if verdict.retry and len(self._undecided) < MAX_TRACKED:
            self._undecided.add(cert_id)
        if not verdict.allow or not thing:
            log.warning("JITR: certificate %s stays PENDING_ACTIVATION: %s", cert_id,
                        verdict.reason if not verdict.allow else "no thing name")
            return
        try:
            self._activate(cert_id, ThingName(thing), str(body.get("jitrRegion") or self._region), template, verdict)
        except GeofleetError as exc:
            log.warning("JITR: certificate %s stays PENDING_ACTIVATION: activating it failed: %s", cert_id, exc)
            return
        log.info("JITR: certificate %s activated as thing %s (%s)", cert_id, thing, verdict.reason)

    def _activate(self, cert_id: str, thing: ThingName, home: str, template: RegistrationTemplate,
                  verdict: Verdict) -> None:
        """In one transaction: the thing (from the template, home = region of first connect),
        the template's policy on the certificate, the certificate as the thing's principal, and
        the certificate ACTIVE."""
        registry = self._registry
        with registry.ledger.atomic():
            if registry.certificates.status(cert_id) is not CertificateStatus.PENDING_ACTIVATION:
                return  # an operator decided meanwhile
            if registry.ledger.live(Kind.THING, thing) is None:
                order = self._order(home)
                registry.things.create(thing, template.thing_type,
                                       {**template.attributes, **verdict.attributes, HOME_ATTRIBUTE: order[0],
                                        REGIONS_ATTRIBUTE: ",".join(order)})
            registry.policies.attach(template.policy_name, cert_id)
            registry.principals.attach(thing, cert_id)
            registry.certificates.update(cert_id, CertificateStatus.ACTIVE)

    def _order(self, home: str) -> tuple[str, ...]:
        places = [Place(r.name, r.latitude, r.longitude) for r in self._fleet.regions]
        if home not in self._regions:
            home = self._region
        return tuple(failover_order(home, [p.name for p in places], places))

    def _spawn(self, work: Awaitable[None], done: Callable[[], None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            done()
            if not t.cancelled() and t.exception() is not None:
                log.error("JITR task failed: %r", t.exception())

        task.add_done_callback(finished)


def _json(payload: Json) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
