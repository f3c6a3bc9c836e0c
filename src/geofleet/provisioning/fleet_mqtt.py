"""AWS IoT fleet provisioning by claim, over MQTT, for devices built on AWS's device SDKs.

A device holding a claim certificate (issued per enrollment group) connects as
``claim.<claim certificate id>[.<suffix>]`` (see ``domain.policy.claim_policy``) and:
1. publishes ``{"certificateSigningRequest": PEM}`` to ``$aws/certificates/create-from-csr/json``
   and gets ``{certificateId, certificatePem, certificateOwnershipToken}`` on ``.../accepted``;
2. publishes ``{certificateOwnershipToken, parameters}`` to
   ``$aws/provisioning-templates/<template>/provision/json`` (the template is the enrollment
   group's name; the thing name is ``parameters.ThingName`` or ``parameters.SerialNumber``) and
   gets ``{thingName, deviceConfiguration}`` on ``.../accepted``.
Failures come on ``.../rejected`` as ``{statusCode, errorCode, errorMessage}``. Replies go to the
requesting connection only (they carry its certificate and token). The same once-only guard and
region choice as the HTTP API apply; the new certificate waits PENDING_ACTIVATION until step 2.

What a claim certificate can do is bounded: each request is checked against its enrollment
group (a revoked group's claim certificates are refused, and revoked), a token bucket per claim
certificate limits its rate and a cap the certificates it has awaiting RegisterThing, the CSR's
subject CN must be empty or the thing name, an ownership token is good for one thing (the guard
of the certificate id's owner region decides, so two regions cannot both accept it) and for one
hour, and a certificate whose token expired unused is deleted by this region's collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable

from cryptography import x509

from geofleet.broker.base import Broker, Connection
from geofleet.domain import ownership
from geofleet.domain.errors import Conflict, GeofleetError, InvalidRequest, NotFound, Unauthorized
from geofleet.domain.geo import Location
from geofleet.domain.guard import DEFAULT_STALE_MS
from geofleet.domain.json_types import Json
from geofleet.domain.names import check_thing_name
from geofleet.domain.policy import CREATE_FROM_CSR_TOPIC, CREATE_KEYS_TOPIC
from geofleet.domain.records import CertificateStatus
from geofleet.domain.throttle import RateLimiter, Throttled
from geofleet.pki.ca import Authority, certificate_id, csr_common_name, issue_leaf, key_pem, load_csr, new_key, sign_csr
from geofleet.provisioning.service import Provisioner, Unavailable
from geofleet.services.certificates import Certificates
from geofleet.services.principals import ThingPrincipals
from geofleet.store.base import Store

log = logging.getLogger(__name__)

CREATE_FROM_CSR = CREATE_FROM_CSR_TOPIC
CREATE_KEYS = CREATE_KEYS_TOPIC
_PROVISION = re.compile(r"^\$aws/provisioning-templates/(?P<template>[^/]+)/provision/json$")
_ALREADY_USED = ("certificateOwnershipToken was already used to provision another thing: a token is good for one "
                 "RegisterThing")
MAX_PENDING = 100
"""Certificates one claim certificate may have awaiting RegisterThing in one region: with the
rate limit alone it could keep an hour's worth (1,200 at 20 a minute) alive."""

_ERROR_CODES: dict[type[GeofleetError], str] = {
    InvalidRequest: "InvalidParameters", Conflict: "ResourceConflict", NotFound: "NotFound",
    Unauthorized: "Unauthorized", Unavailable: "ServiceUnavailable", Throttled: "Throttling",
}


class FleetProvisioning:
    def __init__(self, provisioner: Provisioner, certificates: Certificates, principals: ThingPrincipals,
                 store: Store, authority: Authority,
                 broker: Broker, locate: Callable[[str], Location], *, token_ttl_s: int = ownership.TOKEN_TTL_S,
                 limiter: RateLimiter | None = None, max_pending: int = MAX_PENDING) -> None:
        self._provisioner, self._store = provisioner, store
        self._certificates, self._principals = certificates, principals
        self._authority, self._broker, self._locate = authority, broker, locate
        self._token_ttl_s, self._max_pending = token_ttl_s, max_pending
        self._limiter = limiter if limiter is not None else RateLimiter(20)
        self._collector: asyncio.Task[None] | None = None

    def handles(self, topic: str) -> bool:
        return topic in (CREATE_FROM_CSR, CREATE_KEYS) or _PROVISION.match(topic) is not None

    async def handle(self, connection: Connection, topic: str, payload: bytes) -> None:
        try:
            group = self._claim_group(connection)
            self._limiter.take(connection.certificate_id, time.monotonic())
            request = _json(payload)
            if topic == CREATE_FROM_CSR:
                answer = self._create_from_csr(connection, group, request)
            elif topic == CREATE_KEYS:
                answer = self._create_keys(connection, group)
            else:
                match = _PROVISION.match(topic)
                assert match is not None
                answer = await self._provision(connection, group, match["template"], request)
        except GeofleetError as error:
            rejection = {"statusCode": error.status, "errorCode": _ERROR_CODES.get(type(error), "InvalidRequest"),
                         "errorMessage": error.message}
            await self._broker.deliver(connection, f"{topic}/rejected", json.dumps(rejection).encode())
            return
        await self._broker.deliver(connection, f"{topic}/accepted", json.dumps(answer).encode())

    def _claim_group(self, connection: Connection) -> str:
        """The enrollment group of the connection's claim certificate, if that group may still
        provision (a revoked group's claim certificates are revoked too, but a claim certificate
        made concurrently in another region may not be yet: this check covers it)."""
        group = self._certificates.describe(connection.certificate_id).get("claimGroup")
        if not group:
            raise Unauthorized("only a claim certificate may use fleet provisioning")
        self._provisioner.group(str(group))
        return str(group)

    def _create_from_csr(self, connection: Connection, group: str, request: Json) -> Json:
        csr = request.get("certificateSigningRequest")
        if not isinstance(csr, str):
            raise InvalidRequest("certificateSigningRequest (a PEM string) is required")
        parsed = load_csr(csr)
        common_name = csr_common_name(parsed)
        ownership.check_common_name(common_name)
        self._check_pending(connection)
        return self._issue(connection, group, sign_csr(self._authority, parsed), common_name)

    def _create_keys(self, connection: Connection, group: str) -> Json:
        """AWS CreateKeysAndCertificate: the region makes the key pair and returns the private key
        this once, to the requesting claim session only; it is kept nowhere. A group that requires
        CSRs refuses it (its devices must make their own keys)."""
        if self._provisioner.group(group).get("requireCsr"):
            raise InvalidRequest(f"enrollment group {group!r} requires a CSR: publish the device's own CSR to "
                                 f"{CREATE_FROM_CSR} (CreateCertificateFromCsr) instead")
        self._check_pending(connection)
        key = new_key()
        answer = self._issue(connection, group, issue_leaf(self._authority, key.public_key(), "geofleet device"), "")
        return {**answer, "privateKey": key_pem(key).decode()}

    def _check_pending(self, connection: Connection) -> None:
        waiting = self._store.claim_pending_count(connection.certificate_id)
        if waiting >= self._max_pending:
            raise Throttled(f"Rate exceeded: {waiting} certificates made for this claim certificate await "
                            f"RegisterThing (at most {self._max_pending}); provision them, or wait for their "
                            "ownership tokens to expire", float(self._token_ttl_s))

    def _issue(self, connection: Connection, group: str, signed: x509.Certificate, common_name: str) -> Json:
        """Register a new certificate PENDING_ACTIVATION with its ownership token (bound to
        ``common_name`` when the CSR named a thing; "" for any)."""
        now = time.time()
        issued = ownership.issue(certificate_id(signed), group, connection.certificate_id, common_name, now,
                                 self._token_ttl_s)
        with self._store.atomic():
            cert = self._certificates.register(signed, CertificateStatus.PENDING_ACTIVATION,
                                               {"ownershipToken": issued.record})
            self._store.claim_pending_add(cert["certificateId"], connection.certificate_id,
                                          int((now + self._token_ttl_s) * 1000))
        return {"certificateId": cert["certificateId"], "certificatePem": cert["certificatePem"],
                "certificateOwnershipToken": issued.token}

    async def _provision(self, connection: Connection, group: str, template: str, request: Json) -> Json:
        if template != group:
            raise NotFound(f"provisioning template {template!r} is not this claim certificate's ({group!r})")
        token = request.get("certificateOwnershipToken")
        cert_id = ownership.certificate_of(token)
        assert isinstance(token, str)
        parameters = request.get("parameters") or {}
        thing = parameters.get("ThingName") or parameters.get("SerialNumber") if isinstance(parameters, dict) else None
        if not isinstance(thing, str):
            raise InvalidRequest("parameters.ThingName or parameters.SerialNumber is required")
        thing = check_thing_name(thing)
        settings = self._provisioner.group(group)
        record = await self._token_record(cert_id)
        ownership.verify(token, record, group, time.time())
        ownership.check_thing_matches(record or {}, thing)
        if set(self._principals.things_of(cert_id)) - {thing}:
            # the guard decides, but a use it lost track of (a crash before "complete", then a
            # stale takeover) must not attach the certificate to a second thing either
            raise Unauthorized(_ALREADY_USED)
        used = await self._use_token(cert_id, thing)

        def activate(order: tuple[str, ...], reasons: list[str], previous: str | None) -> Json:
            with self._store.atomic():
                self._certificates.update(cert_id, CertificateStatus.ACTIVE)
                self._provisioner.write_device(thing, settings, cert_id, order, previous)
            return {"thingName": thing, "deviceConfiguration": {
                "homeRegion": order[0], "endpoints": json.dumps(self._provisioner.endpoints(order))}}

        try:
            _, answer = await self._provisioner.once(thing, cert_id, settings, self._locate(connection.ip), activate)
        except BaseException:
            if used:
                await self._token_guard(cert_id, "release", thing)
            raise
        if used:
            await self._token_guard(cert_id, "complete", thing, {"thingName": thing})
        return answer

    async def _token_record(self, cert_id: str) -> Json | None:
        """The token stored with the certificate, waiting (bounded) for a certificate created in
        another region to replicate here."""
        try:
            await self._provisioner.await_certificate(cert_id)
        except Unavailable:
            raise Unauthorized("certificateOwnershipToken is unknown or expired (if its certificate was created in "
                               "another region a moment ago, retry in a few seconds)") from None
        body = self._certificates.describe(cert_id)
        status = body.get("status")
        if status not in (CertificateStatus.PENDING_ACTIVATION, CertificateStatus.ACTIVE):
            raise Unauthorized(f"the certificate of this certificateOwnershipToken is {status}")
        record = body.get("ownershipToken")
        return record if isinstance(record, dict) else None

    async def _use_token(self, cert_id: str, thing: str) -> bool:
        """Take the token's single use for ``thing`` at the guard of the certificate id's owner
        region. True if this request took it; False for the same thing again (a retry after a
        lost answer, which gets the stored answer); Unauthorized if it went to another thing
        or expired."""
        answer = await self._token_guard(cert_id, "claim", thing)
        state, detail = answer["state"], answer.get("detail") or {}
        if state == "claimed":
            return True
        if state == "done":
            return False
        if state == "busy":
            raise Unavailable("this certificateOwnershipToken is being used right now: retry shortly", retry_after=1)
        if detail.get("fingerprint") == ownership.EXPIRED:
            raise Unauthorized("certificateOwnershipToken has expired and its certificate was deleted: "
                               "create a new certificate with CreateCertificateFromCsr")
        raise Unauthorized(_ALREADY_USED)

    async def _token_guard(self, cert_id: str, action: str, fingerprint: str, answer: Json | None = None) -> Json:
        body: Json = {"fingerprint": fingerprint, "staleMs": DEFAULT_STALE_MS}
        if answer is not None:
            body["answer"] = answer
        return await self._provisioner.guard(ownership.GUARD_PREFIX + cert_id, action, body)

    # -- collecting certificates whose token expired unused -------------------------------------

    def start(self) -> None:
        """Run the collector in the background, every fifth of the token lifetime (at most a minute)."""
        if self._collector is None:
            self._collector = asyncio.ensure_future(self._collect_forever(min(60.0, max(0.5, self._token_ttl_s / 5))))

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None

    async def _collect_forever(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                collected = await self.collect_expired(time.time())
            except Exception:
                log.exception("collecting expired fleet-provisioning certificates failed; will retry")
                continue
            if collected:
                log.info("deleted %d PENDING_ACTIVATION certificate(s) whose ownership token expired unused",
                         collected)

    async def collect_expired(self, now: float) -> int:
        """Delete the certificates this region made whose token expired without a RegisterThing.
        The token's guard is claimed as EXPIRED first, so a RegisterThing that races with the
        collector (in any region) either finished first (the certificate is kept) or is refused."""
        collected = 0
        for cert_id in self._store.claim_pending_due(int(now * 1000)):
            try:
                answer = await self._token_guard(cert_id, "claim", ownership.EXPIRED)
            except Unavailable:
                continue  # the guard's region is unreachable: next round
            state = answer["state"]
            if state == "busy":
                continue
            if state == "claimed":
                await self._token_guard(cert_id, "complete", ownership.EXPIRED, {"expired": True})
            if state in ("claimed", "done") and \
                    self._certificates.status(cert_id) is CertificateStatus.PENDING_ACTIVATION:
                try:
                    self._certificates.delete(cert_id)
                    collected += 1
                except GeofleetError as error:  # e.g. an operator attached a policy to it meanwhile
                    log.warning("kept expired PENDING_ACTIVATION certificate %s: %s", cert_id, error.message)
            self._store.claim_pending_done(cert_id)
        return collected


def _json(payload: bytes) -> Json:
    try:
        body = json.loads(payload or b"{}")
    except ValueError:
        raise InvalidRequest("the payload is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the payload must be a JSON object")
    return body
