"""AWS IoT fleet provisioning by claim, over MQTT, for devices built on AWS's device SDKs.

A device holding a claim certificate (issued per enrollment group) connects and:
1. publishes ``{"certificateSigningRequest": PEM}`` to ``$aws/certificates/create-from-csr/json``
   and gets ``{certificateId, certificatePem, certificateOwnershipToken}`` on ``.../accepted``;
2. publishes ``{certificateOwnershipToken, parameters}`` to
   ``$aws/provisioning-templates/<template>/provision/json`` (the template is the enrollment
   group's name; the thing name is ``parameters.ThingName`` or ``parameters.SerialNumber``) and
   gets ``{thingName, deviceConfiguration}`` on ``.../accepted``.
Failures come on ``.../rejected`` as ``{statusCode, errorCode, errorMessage}``. Replies go to the
requesting connection only (they carry its certificate and token). The same once-only guard and
region choice as the HTTP API apply; the new certificate waits PENDING_ACTIVATION until step 2.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from geofleet.broker.base import Broker, Connection
from geofleet.domain.errors import Conflict, GeofleetError, InvalidRequest, NotFound, Unauthorized
from geofleet.domain.geo import Location
from geofleet.domain.names import check_thing_name
from geofleet.domain.records import CertificateStatus
from geofleet.pki.ca import Authority, cert_pem, sign_csr
from geofleet.provisioning.service import Provisioner, Unavailable
from geofleet.region.registry import Registry
from geofleet.store.base import Store

CREATE_FROM_CSR = "$aws/certificates/create-from-csr/json"
_PROVISION = re.compile(r"^\$aws/provisioning-templates/(?P<template>[^/]+)/provision/json$")
TOKEN_TTL_S = 300
Json = dict[str, Any]

_ERROR_CODES: dict[type[GeofleetError], str] = {
    InvalidRequest: "InvalidParameters", Conflict: "ResourceConflict", NotFound: "NotFound",
    Unauthorized: "Unauthorized", Unavailable: "ServiceUnavailable",
}


class FleetProvisioning:
    def __init__(self, provisioner: Provisioner, registry: Registry, store: Store, authority: Authority,
                 broker: Broker, locate: Callable[[str], Location]) -> None:
        self._provisioner, self._registry, self._store = provisioner, registry, store
        self._authority, self._broker, self._locate = authority, broker, locate
        self._tokens: dict[str, tuple[str, str, float]] = {}
        """ownership token -> (certificate id, enrollment group, expiry)."""

    def handles(self, topic: str) -> bool:
        return topic == CREATE_FROM_CSR or _PROVISION.match(topic) is not None

    async def handle(self, connection: Connection, topic: str, payload: bytes) -> None:
        try:
            group = self._claim_group(connection)
            request = _json(payload)
            if topic == CREATE_FROM_CSR:
                answer = self._create_from_csr(group, request)
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
        group = self._registry.describe_certificate(connection.certificate_id).get("claimGroup")
        if not group:
            raise Unauthorized("only a claim certificate may use fleet provisioning")
        return str(group)

    def _create_from_csr(self, group: str, request: Json) -> Json:
        csr = request.get("certificateSigningRequest")
        if not isinstance(csr, str):
            raise InvalidRequest("certificateSigningRequest (a PEM string) is required")
        cert = self._registry.register_certificate(cert_pem(sign_csr(self._authority, csr)).decode(),
                                                   CertificateStatus.PENDING_ACTIVATION)
        now = time.time()
        for expired in [t for t, (_, _, until) in self._tokens.items() if until < now]:
            del self._tokens[expired]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (cert["certificateId"], group, now + TOKEN_TTL_S)
        return {"certificateId": cert["certificateId"], "certificatePem": cert["certificatePem"],
                "certificateOwnershipToken": token}

    async def _provision(self, connection: Connection, group: str, template: str, request: Json) -> Json:
        if template != group:
            raise NotFound(f"provisioning template {template!r} is not this claim certificate's ({group!r})")
        token = request.get("certificateOwnershipToken")
        owned = self._tokens.get(token) if isinstance(token, str) else None
        if owned is None or owned[2] < time.time() or owned[1] != group:
            raise Unauthorized("certificateOwnershipToken is unknown or expired: create a certificate first")
        cert_id = owned[0]
        parameters = request.get("parameters") or {}
        thing = parameters.get("ThingName") or parameters.get("SerialNumber") if isinstance(parameters, dict) else None
        if not isinstance(thing, str):
            raise InvalidRequest("parameters.ThingName or parameters.SerialNumber is required")
        check_thing_name(thing)
        settings = self._provisioner.group(group)

        def activate(order: tuple[str, ...], reasons: list[str], previous: str | None) -> Json:
            with self._store.atomic():
                self._registry.update_certificate(cert_id, CertificateStatus.ACTIVE)
                self._provisioner.write_device(thing, settings, cert_id, order, previous)
            return {"thingName": thing, "deviceConfiguration": {
                "homeRegion": order[0], "endpoints": json.dumps(self._provisioner.endpoints(order))}}

        _, answer = await self._provisioner.once(thing, cert_id, settings, self._locate(connection.ip), activate)
        return answer


def _json(payload: bytes) -> Json:
    try:
        body = json.loads(payload or b"{}")
    except ValueError:
        raise InvalidRequest("the payload is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the payload must be a JSON object")
    return body
