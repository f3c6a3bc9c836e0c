"""Provisioning a device: who may (enrollment proof), where it lives (geolocation and region
choice), once only (a guard in the device id's owner region), with its key kept on the device
(the request carries a CSR).

Any region can serve the request. The guard write is an atomic claim in the owner region
(rendezvous hashing over the fleet's regions), reached over the peer channel; if the owner
cannot be reached the answer is 503 with Retry-After, never a second certificate. A retry with
the same CSR gets the stored answer; a different CSR for a provisioned id gets 409 unless its
enrollment group allows re-provisioning.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.x509 import CertificateSigningRequest

from geofleet.config import FleetConfig
from geofleet.domain import enrollment
from geofleet.domain.endpoints import HOME_ATTRIBUTE, REGIONS_ATTRIBUTE
from geofleet.domain.errors import Conflict, GeofleetError, InvalidRequest, Unauthorized
from geofleet.domain.geo import Location, NoRegionAllowed, Place, choose_home
from geofleet.domain.guard import DEFAULT_STALE_MS
from geofleet.domain.json_types import Json
from geofleet.domain.names import ThingName, check_thing_name
from geofleet.domain.network import client_address, parse_networks
from geofleet.domain.placement import owner
from geofleet.domain.records import CertificateStatus
from geofleet.domain.rescoping import plan_move
from geofleet.pki.ca import Authority, cert_pem, csr_common_name, load_csr, sign_csr
from geofleet.services.guard import guard_action
from geofleet.services.region_health import RegionHealth
from geofleet.services.registry import Registry
from geofleet.store.base import Store

GuardCall = Callable[[str, str, Json], Awaitable[Json]]
"""(owner region, action, body) -> the owner's answer; raises when the owner is unreachable."""

"""Thing attribute that records a device's home region (set by provisioning and by moves)."""


class Unavailable(GeofleetError):
    status = 503
    code = "ServiceUnavailable"

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Timings:
    """Milliseconds spent per step of one request (reported in a Server-Timing header)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.ms.items())


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    device_id: str
    csr: str
    group: str | None
    """None: the device has an individual enrollment."""
    timestamp: int
    signature: str


class Provisioner:
    def __init__(self, fleet: FleetConfig, region: str, registry: Registry, store: Store, authority: Authority,
                 root_ca_pem: str, locate: Callable[[str], Location], guard: GuardCall,
                 health: RegionHealth) -> None:
        self._fleet, self._region = fleet, region
        self._registry, self._store, self._authority = registry, store, authority
        self._root_ca_pem = root_ca_pem
        self._locate, self._guard, self._health = locate, guard, health
        self._trusted = parse_networks(fleet.trusted_proxies)
        self._seen: dict[str, float] = {}
        """Signatures accepted recently: an identical request replayed within the skew window fails."""

    async def provision(self, request: ProvisionRequest, peer_ip: str, forwarded_for: str | None,
                        timings: Timings | None = None) -> tuple[int, Json]:
        """Returns (HTTP status, answer): 201 for a new device, 200 for a retry. ``timings``
        collects milliseconds per step (auth, geo, guard, sign, registry) for Server-Timing."""
        timings = timings if timings is not None else Timings()
        with timings.step("auth"):
            device_id = check_thing_name(request.device_id)
            group = self.group(request.group or device_id, individual=not request.group)
            fingerprint = enrollment.csr_fingerprint(request.csr)
            now = time.time()
            key = enrollment.decode_key(group["key"])
            if request.group:
                key = enrollment.device_key(key, request.device_id)
            enrollment.verify_device(key, request.device_id, fingerprint, request.timestamp, request.signature, now)
            self._check_replay(request.signature, now)
            csr = load_csr(request.csr)
            if csr_common_name(csr) != request.device_id:
                raise InvalidRequest(f"the CSR's subject CN must be the device id {request.device_id!r}")
        with timings.step("geo"):
            location = self._locate(client_address(peer_ip, forwarded_for, self._trusted))

        def create(order: tuple[str, ...], reasons: list[str], previous: str | None) -> Json:
            return self._create(device_id, csr, group, order, reasons, timings, previous)

        return await self.once(device_id, fingerprint, group, location, create, timings)

    async def once(self, device_id: str, fingerprint: str, group: Json, location: Location,
                   create: Callable[[tuple[str, ...], list[str], str | None], Json], timings: Timings | None = None
                   ) -> tuple[int, Json]:
        """The provision-once protocol around ``create`` (which writes the device and returns the
        answer): region choice, claim at the owner, stored answer for retries, release on failure."""
        timings = timings if timings is not None else Timings()
        with timings.step("geo"):
            choice = self._choose(location, group)
        guard_owner = owner(device_id, [r.name for r in self._fleet.regions])
        claim = {"deviceId": device_id, "fingerprint": fingerprint, "staleMs": DEFAULT_STALE_MS}
        with timings.step("guard"):
            state, detail = await self._claim(guard_owner, claim)
        if state == "done":
            return 200, dict(detail)
        if state == "busy":
            raise Unavailable("this device is being provisioned right now: retry shortly", retry_after=1)
        previous: str | None = None
        if state == "taken":
            if not group.get("reprovision"):
                raise Conflict(f"device {device_id!r} is already provisioned with another key; "
                               "its enrollment group does not allow re-provisioning")
            previous = detail.get("certificateId")
            if previous is not None:
                await self.await_certificate(previous)
            await self._call(guard_owner, "release", {"deviceId": device_id, "fingerprint": detail["fingerprint"]})
            state, detail = await self._claim(guard_owner, claim)
            if state != "claimed":
                raise Unavailable("re-provisioning raced with another request: retry", retry_after=1)
        try:
            answer = create(choice.permitted, list(choice.reasons), previous)
        except BaseException:
            await self._call(guard_owner, "release", claim)
            raise
        with timings.step("guard"):
            await self._call(guard_owner, "complete", {**claim, "answer": answer})
        return 201, answer

    def move(self, thing: str, region: str, regions: Sequence[str] | None = None) -> Json:
        """Migrate a device's home (an operator's decision, like DPS re-provisioning). Without
        ``regions`` its permitted regions (its residency scope) stay, and ``region`` must be one
        of them; with ``regions`` they become its new scope. Only a region in both the old and
        the new scope may write the move (``domain.rescoping``: WrongRegion names them); the
        device's data then follows the scope (``services.residency``)."""
        body = self._registry.things.describe(thing)  # NotFound for an unknown thing
        places = [Place(r.name, r.latitude, r.longitude) for r in self._fleet.regions]
        plan = plan_move(thing, body, region, regions, places, self._region)
        attributes: dict[str, str | None] = {HOME_ATTRIBUTE: plan.home}
        if plan.regions_attribute is not None:
            attributes[REGIONS_ATTRIBUTE] = plan.regions_attribute
        self._registry.things.update(thing, attributes=attributes, expected_version=body["version"])
        return {"thingName": thing, "homeRegion": plan.home, "regions": plan.scope.listed() or None,
                "endpoints": self.endpoints(plan.order)}

    def write_device(self, thing: ThingName, group: Json, cert_id: str, order: tuple[str, ...], previous: str | None
                     ) -> None:
        """The registry side of provisioning (inside the caller's transaction): the thing with
        its group's type and attributes, its home and the regions it may fail over to, the
        group's policy on the certificate, and the certificate as the thing's only principal."""
        self._registry.things.create(thing, group.get("thingTypeName"),
                                    {**(group.get("attributes") or {}), HOME_ATTRIBUTE: order[0],
                                     REGIONS_ATTRIBUTE: ",".join(order)})
        self._registry.policies.attach(group["policyName"], cert_id)
        self._replace_principal(thing, cert_id, previous)

    def _replace_principal(self, thing: str, cert_id: str, previous: str | None) -> None:
        """A provisioned device has one certificate: a re-provisioned device's earlier ones are
        deactivated (their sessions cut) and detached, since the old key may be in other hands."""
        for old in {*self._registry.principals.of_thing(thing), *([previous] if previous else [])} - {cert_id}:
            if self._registry.certificates.status(old) is CertificateStatus.ACTIVE:
                self._registry.certificates.update(old, CertificateStatus.INACTIVE)
            self._registry.principals.detach(thing, old, even_if_absent=True)
        self._registry.principals.attach(thing, cert_id)

    async def await_certificate(self, cert_id: str, timeout: float = 5.0) -> None:
        """The device's previous certificate may have been issued in another region and not be
        here yet: wait (bounded) for replication to bring it, so that it can be retired."""
        deadline = time.monotonic() + timeout
        while self._registry.certificates.status(cert_id) is None:
            if time.monotonic() > deadline:
                raise Unavailable("the device's previous certificate has not reached this region yet: retry", 1)
            await asyncio.sleep(0.02)

    def endpoints(self, order: tuple[str, ...]) -> list[Json]:
        return [self._fleet.region(name).endpoint.to_json() for name in order]

    def group(self, name: str, individual: bool = False) -> Json:
        """An enrollment (group, or individual) that may provision now; Unauthorized otherwise."""
        what = "individual enrollment for device" if individual else "enrollment group"
        try:
            group = self._registry.enrollments.get(name, individual)
        except GeofleetError:
            raise Unauthorized(f"unknown {what} {name!r}") from None
        if group.get("revoked"):
            raise Unauthorized(f"{what} {name!r} is revoked")
        return group

    def _check_replay(self, signature: str, now: float) -> None:
        horizon = now - 2 * enrollment.MAX_SKEW_S
        for old in [s for s, t in self._seen.items() if t < horizon]:
            del self._seen[old]
        if signature in self._seen:
            raise Unauthorized("this exact request was already used: sign a fresh one (new timestamp)")
        self._seen[signature] = now

    def _choose(self, location: Location, group: Json) -> Any:
        places = [Place(r.name, r.latitude, r.longitude) for r in self._fleet.regions]
        down = self._health.down() - {self._region}
        try:
            return choose_home(location, places, default=self._fleet.home_default, residency=self._fleet.residency,
                               allowed=group.get("allowedRegions"), unhealthy=down,
                               weights={r.name: r.weight for r in self._fleet.regions})
        except NoRegionAllowed as exc:
            raise InvalidRequest(str(exc)) from None

    async def guard(self, key: str, action: str, body: Json) -> Json:
        """``action`` on the once-only guard of any ``key`` (not only device ids: fleet
        provisioning guards its ownership tokens with it), in the key's owner region, so that
        two regions can never both win; Unavailable if the owner cannot be reached."""
        guard_owner = owner(key, [r.name for r in self._fleet.regions])
        return await self._call(guard_owner, action, {**body, "deviceId": key})

    async def _claim(self, guard_owner: str, claim: Json) -> tuple[str, Any]:
        answer = await self._call(guard_owner, "claim", claim)
        return str(answer["state"]), answer.get("detail")

    async def _call(self, guard_owner: str, action: str, body: Json) -> Json:
        if guard_owner == self._region:
            return guard_action(self._store, action, body)
        try:
            return await self._guard(guard_owner, action, body)
        except Exception as exc:
            raise Unavailable(f"the region that guards this device id ({guard_owner}) cannot be reached "
                              f"({type(exc).__name__}); retry later") from None

    def _create(self, thing: ThingName, csr: CertificateSigningRequest, group: Json, order: tuple[str, ...],
                reasons: list[str], timings: Timings, previous: str | None) -> Json:
        with timings.step("sign"):
            signed = sign_csr(self._authority, csr)
        with timings.step("registry"), self._store.atomic():
            cert = self._registry.certificates.register(signed, CertificateStatus.ACTIVE)
            self.write_device(thing, group, cert["certificateId"], order, previous)
        endpoints = self.endpoints(order)
        return {"thingName": thing, "certificateId": cert["certificateId"], "certificatePem": cert["certificatePem"],
                "caChain": [cert_pem(self._authority.cert).decode(), self._root_ca_pem],
                "homeRegion": order[0], "endpoints": endpoints, "reasons": reasons}
