"""The region's HTTP admin API (FastAPI; OpenAPI at ``/openapi.json`` and ``/docs``).

Every route needs the fleet's admin token (``Authorization: Bearer ...``) except ``/health``
and ``/v1/endpoints/<device>`` (see ``directory_api``) and ``/v1/provision`` (which checks the
device's enrollment signature instead).
Errors come back as ``{"code": ..., "message": ...}`` with a 4xx status; shadow routes use
AWS's shadow error codes and messages.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel, Field

from geofleet.body_limit import BodyLimit
from geofleet.domain.errors import Unauthorized
from geofleet.domain.json_types import Json
from geofleet.domain.network import join_forwarded
from geofleet.domain.paging import MAX_TOKEN_LENGTH, PageTokens, page_of
from geofleet.domain.policy import DEFAULT_POLICY_NAME
from geofleet.domain.records import CertificateStatus
from geofleet.http_errors import install_error_shape
from geofleet.provisioning.service import Provisioner, ProvisionRequest, Timings
from geofleet.replication.service import Replication
from geofleet.services.registry import Registry
from geofleet.services.shadows import ShadowService

MAX_BODY_BYTES = 64 * 1024
MAX_THINGS_PAGE = 250
"""AWS ListThings' largest ``maxResults``."""
MAX_CERTIFICATES_PAGE = 250
"""AWS ListCertificates' largest ``pageSize``."""
MAX_SHADOWS_PAGE = 100
"""AWS ListNamedShadowsForThing's largest ``pageSize``."""
UNSIZED_PAGE = 10_000
"""The page a listing without a page size gets: bounded (no answer holds a whole large registry)
yet large enough that callers written before paging still see every item of a small fleet."""
ShadowName = Annotated[str, Query(alias="name", description="Named shadow; empty for the classic shadow.")]


class ThingIn(BaseModel):
    thingTypeName: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class ThingUpdate(BaseModel):
    attributes: dict[str, str | None] | None = None
    merge: bool = True
    thingTypeName: str | None = None
    removeThingType: bool = False
    expectedVersion: int | None = None


class ThingTypeIn(BaseModel):
    description: str = Field(default="", max_length=2028)
    searchableAttributes: list[str] = Field(default_factory=list, max_length=3)


class CsrIn(BaseModel):
    certificateSigningRequest: str = Field(max_length=16 * 1024)
    setAsActive: bool = False


class CertificateIn(BaseModel):
    certificatePem: str = Field(max_length=16 * 1024)
    status: CertificateStatus = CertificateStatus.ACTIVE


class StatusIn(BaseModel):
    newStatus: CertificateStatus


class PolicyIn(BaseModel):
    policyDocument: str = Field(max_length=20 * 1024)


class EnrollmentGroupIn(BaseModel):
    policyName: str = DEFAULT_POLICY_NAME
    thingTypeName: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    allowedRegions: list[str] | None = None
    reprovision: bool = False


class MoveIn(BaseModel):
    region: str = Field(max_length=64)


class ProvisionIn(BaseModel):
    deviceId: str = Field(max_length=128)
    certificateSigningRequest: str = Field(max_length=16 * 1024)
    enrollmentGroup: str | None = Field(default=None, max_length=128)
    """Omitted for a device with an individual enrollment."""
    timestamp: int
    signature: str = Field(max_length=128)


Routes = Callable[[list[Any]], APIRouter]
"""Builds more routes, given the dependency that guards admin routes."""


def create_app(registry: Registry, shadows: ShadowService, token: str, region: str,
               replication: Replication, provisioner: Provisioner, more: Routes) -> FastAPI:
    def authenticated(authorization: Annotated[str | None, Header()] = None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        # Bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500).
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("send the fleet's admin token as 'Authorization: Bearer <token>'")

    app = FastAPI(title=f"geofleet region {region}", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    install_error_shape(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # outermost: before routing and authentication
    guarded = [Depends(authenticated)]
    tokens = PageTokens(token.encode())

    app.include_router(more(guarded))

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi() -> Json:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    # -- things --------------------------------------------------------------------------
    @app.get("/things", tags=["things"], dependencies=guarded)
    async def list_things(maxResults: Annotated[int | None, Query(ge=1, le=MAX_THINGS_PAGE)] = None,
                          nextToken: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListThings paging: at most ``maxResults`` things in name order, and ``nextToken``
        while more follow (without ``maxResults``: pages of ``UNSIZED_PAGE``)."""
        size = maxResults or UNSIZED_PAGE
        rows = registry.things.all(tokens.decode("things", nextToken), size + 1)
        page = page_of(rows, size, lambda t: str(t["thingName"]), "things", tokens)
        return {"things": page.items, **_next("nextToken", page.next_token)}

    @app.post("/things/{name}", tags=["things"], status_code=201, dependencies=guarded)
    async def create_thing(name: str, body: ThingIn | None = None) -> Json:
        body = body or ThingIn()
        return registry.things.create(name, body.thingTypeName, body.attributes)

    @app.get("/things/{name}", tags=["things"], dependencies=guarded)
    async def describe_thing(name: str) -> Json:
        return registry.things.describe(name)

    @app.patch("/things/{name}", tags=["things"], dependencies=guarded)
    async def update_thing(name: str, body: ThingUpdate) -> Json:
        return registry.things.update(name, attributes=body.attributes, merge=body.merge,
                                     type_name=body.thingTypeName, remove_type=body.removeThingType,
                                     expected_version=body.expectedVersion)

    @app.delete("/things/{name}", tags=["things"], status_code=204, dependencies=guarded)
    async def delete_thing(name: str, expectedVersion: int | None = None) -> None:
        registry.things.delete(name, expectedVersion)

    @app.get("/things/{name}/principals", tags=["things"], dependencies=guarded)
    async def list_principals(name: str) -> Json:
        registry.things.describe(name)
        return {"principals": registry.principals.of_thing(name)}

    @app.put("/things/{name}/principals/{cert_id}", tags=["things"], status_code=204, dependencies=guarded)
    async def attach_principal(name: str, cert_id: str) -> None:
        registry.principals.attach(name, cert_id)

    @app.delete("/things/{name}/principals/{cert_id}", tags=["things"], status_code=204, dependencies=guarded)
    async def detach_principal(name: str, cert_id: str) -> None:
        registry.principals.detach(name, cert_id)

    # -- thing types ---------------------------------------------------------------------
    @app.get("/thing-types", tags=["thing types"], dependencies=guarded)
    async def list_types() -> Json:
        return {"thingTypes": registry.thing_types.all()}

    @app.post("/thing-types/{name}", tags=["thing types"], status_code=201, dependencies=guarded)
    async def create_type(name: str, body: ThingTypeIn | None = None) -> Json:
        body = body or ThingTypeIn()
        return registry.thing_types.create(name, body.description, body.searchableAttributes)

    @app.get("/thing-types/{name}", tags=["thing types"], dependencies=guarded)
    async def describe_type(name: str) -> Json:
        return registry.thing_types.describe(name)

    @app.post("/thing-types/{name}/deprecate", tags=["thing types"], dependencies=guarded)
    async def deprecate_type(name: str, undo: bool = False) -> Json:
        return registry.thing_types.deprecate(name, undo)

    @app.delete("/thing-types/{name}", tags=["thing types"], status_code=204, dependencies=guarded)
    async def delete_type(name: str) -> None:
        registry.thing_types.delete(name)

    # -- certificates --------------------------------------------------------------------
    @app.get("/certificates", tags=["certificates"], dependencies=guarded)
    async def list_certificates(pageSize: Annotated[int | None, Query(ge=1, le=MAX_CERTIFICATES_PAGE)] = None,
                                marker: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListCertificates paging: at most ``pageSize`` certificates in id order, and
        ``nextMarker`` while more follow (without ``pageSize``: pages of ``UNSIZED_PAGE``)."""
        size = pageSize or UNSIZED_PAGE
        rows = registry.certificates.all(tokens.decode("certificates", marker), size + 1)
        page = page_of(rows, size, lambda c: str(c["certificateId"]), "certificates", tokens)
        return {"certificates": page.items, **_next("nextMarker", page.next_token)}

    @app.post("/certificates/from-csr", tags=["certificates"], status_code=201, dependencies=guarded)
    async def create_from_csr(body: CsrIn) -> Json:
        return registry.certificates.create_from_csr(body.certificateSigningRequest, body.setAsActive)

    @app.post("/certificates", tags=["certificates"], status_code=201, dependencies=guarded)
    async def register_certificate(body: CertificateIn) -> Json:
        return registry.certificates.register(body.certificatePem, body.status)

    @app.get("/certificates/{cert_id}", tags=["certificates"], dependencies=guarded)
    async def describe_certificate(cert_id: str) -> Json:
        return registry.certificates.describe(cert_id)

    @app.put("/certificates/{cert_id}/status", tags=["certificates"], dependencies=guarded)
    async def update_certificate(cert_id: str, body: StatusIn) -> Json:
        return registry.certificates.update(cert_id, body.newStatus)

    @app.post("/certificates/{cert_id}/revoke", tags=["certificates"], dependencies=guarded)
    async def revoke_certificate(cert_id: str) -> Json:
        return registry.certificates.update(cert_id, CertificateStatus.REVOKED)

    @app.delete("/certificates/{cert_id}", tags=["certificates"], status_code=204, dependencies=guarded)
    async def delete_certificate(cert_id: str) -> None:
        registry.certificates.delete(cert_id)

    @app.get("/certificates/{cert_id}/policies", tags=["certificates"], dependencies=guarded)
    async def certificate_policies(cert_id: str) -> Json:
        registry.certificates.describe(cert_id)
        return {"policies": registry.policies.of(cert_id)}

    @app.get("/certificates/{cert_id}/things", tags=["certificates"], dependencies=guarded)
    async def certificate_things(cert_id: str) -> Json:
        registry.certificates.describe(cert_id)
        return {"things": registry.principals.things_of(cert_id)}

    # -- policies ------------------------------------------------------------------------
    @app.get("/policies", tags=["policies"], dependencies=guarded)
    async def list_policies() -> Json:
        return {"policies": registry.policies.all()}

    @app.post("/policies/{name}", tags=["policies"], status_code=201, dependencies=guarded)
    async def create_policy(name: str, body: PolicyIn) -> Json:
        return registry.policies.create(name, body.policyDocument)

    @app.put("/policies/{name}", tags=["policies"], dependencies=guarded)
    async def replace_policy(name: str, body: PolicyIn) -> Json:
        return registry.policies.replace(name, body.policyDocument)

    @app.get("/policies/{name}", tags=["policies"], dependencies=guarded)
    async def get_policy(name: str) -> Json:
        return registry.policies.get(name)

    @app.delete("/policies/{name}", tags=["policies"], status_code=204, dependencies=guarded)
    async def delete_policy(name: str) -> None:
        registry.policies.delete(name)

    @app.get("/policies/{name}/targets", tags=["policies"], dependencies=guarded)
    async def policy_targets(name: str) -> Json:
        registry.policies.get(name)
        return {"targets": registry.policies.targets(name)}

    @app.put("/policies/{name}/targets/{cert_id}", tags=["policies"], status_code=204, dependencies=guarded)
    async def attach_policy(name: str, cert_id: str) -> None:
        registry.policies.attach(name, cert_id)

    @app.delete("/policies/{name}/targets/{cert_id}", tags=["policies"], status_code=204, dependencies=guarded)
    async def detach_policy(name: str, cert_id: str) -> None:
        registry.policies.detach(name, cert_id)

    # -- shadows (AWS's data-plane paths) ------------------------------------------------
    @app.get("/things/{thing}/shadow", tags=["shadows"], dependencies=guarded)
    async def get_shadow(thing: str, name: ShadowName = "") -> Json:
        return shadows.get(thing, name)

    @app.post("/things/{thing}/shadow", tags=["shadows"], dependencies=guarded,
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"type": "object", "description": "AWS shadow update document"}}}}})
    async def update_shadow(thing: str, request: Request, name: ShadowName = "") -> Json:
        return await shadows.update(thing, name, await request.body())

    @app.delete("/things/{thing}/shadow", tags=["shadows"], dependencies=guarded)
    async def delete_shadow(thing: str, name: ShadowName = "") -> Json:
        return await shadows.delete(thing, name)

    @app.get("/api/things/shadow/ListNamedShadowsForThing/{thing}", tags=["shadows"], dependencies=guarded)
    async def list_named_shadows(thing: str,
                                 pageSize: Annotated[int | None, Query(ge=1, le=MAX_SHADOWS_PAGE)] = None,
                                 nextToken: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListNamedShadowsForThing: ``results`` (names, classic shadow excluded),
        ``nextToken`` while more follow, ``timestamp``."""
        size = pageSize or UNSIZED_PAGE
        listing = f"shadows/{thing}"
        names = shadows.names_after(thing, tokens.decode(listing, nextToken), size + 1)
        page = page_of(names, size, str, listing, tokens)
        return {"results": page.items, **_next("nextToken", page.next_token), "timestamp": int(time.time())}

    # -- provisioning ----------------------------------------------------------------------
    @app.post("/v1/provision", tags=["provisioning"], status_code=201)
    async def provision(body: ProvisionIn, request: Request, response: Response) -> Json:
        """Provision a device (no admin token: the enrollment proof authenticates it). 201 with
        the certificate, CA chain, home region and ordered endpoints; 200 for a retry."""
        timings = Timings()
        status, answer = await provisioner.provision(
            ProvisionRequest(body.deviceId, body.certificateSigningRequest, body.enrollmentGroup, body.timestamp,
                             body.signature),
            request.client.host if request.client else "", join_forwarded(request.headers.getlist("x-forwarded-for")),
            timings)
        response.status_code = status
        response.headers["Server-Timing"] = timings.header()
        return answer

    @app.get("/enrollment-groups", tags=["provisioning"], dependencies=guarded)
    async def list_groups() -> Json:
        return {"enrollmentGroups": registry.enrollments.all()}

    @app.post("/enrollment-groups/{name}", tags=["provisioning"], status_code=201, dependencies=guarded)
    async def create_group(name: str, body: EnrollmentGroupIn | None = None) -> Json:
        """Create a group; the answer holds its secret key, shown this once."""
        body = body or EnrollmentGroupIn()
        return registry.enrollments.create(name, policy=body.policyName, thing_type=body.thingTypeName,
                                                attributes=body.attributes, allowed_regions=body.allowedRegions,
                                                reprovision=body.reprovision)

    @app.post("/things/{name}/move", tags=["provisioning"], dependencies=guarded)
    async def move_device(name: str, body: MoveIn) -> Json:
        """Give a device a new home region; answers its new endpoint order."""
        return provisioner.move(name, body.region)

    @app.get("/enrollments", tags=["provisioning"], dependencies=guarded)
    async def list_enrollments() -> Json:
        return {"enrollments": registry.enrollments.all(individual=True)}

    @app.post("/enrollments/{device_id}", tags=["provisioning"], status_code=201, dependencies=guarded)
    async def create_enrollment(device_id: str, body: EnrollmentGroupIn | None = None) -> Json:
        """Allow one device id to provision, with its own key (shown this once)."""
        body = body or EnrollmentGroupIn()
        return registry.enrollments.create(device_id, policy=body.policyName, thing_type=body.thingTypeName,
                                                attributes=body.attributes, allowed_regions=body.allowedRegions,
                                                reprovision=body.reprovision, individual=True)

    @app.post("/enrollments/{device_id}/revoke", tags=["provisioning"], dependencies=guarded)
    async def revoke_enrollment(device_id: str) -> Json:
        return registry.enrollments.revoke(device_id, individual=True)

    @app.post("/enrollment-groups/{name}/claim-certificate", tags=["provisioning"], status_code=201,
              dependencies=guarded)
    async def claim_certificate(name: str, body: CsrIn) -> Json:
        """A claim certificate for AWS-style fleet provisioning over MQTT, from a CSR."""
        return registry.enrollments.create_claim_certificate(name, body.certificateSigningRequest)

    @app.post("/enrollment-groups/{name}/revoke", tags=["provisioning"], dependencies=guarded)
    async def revoke_group(name: str) -> Json:
        return registry.enrollments.revoke(name)

    # -- replication ---------------------------------------------------------------------
    @app.get("/replication/status", tags=["replication"], dependencies=guarded)
    async def replication_status() -> Json:
        return replication.report()

    @app.post("/replication/sync", tags=["replication"], dependencies=guarded)
    async def replication_sync() -> Json:
        """Run anti-entropy with every peer now."""
        return {"peers": await replication.sync()}

    @app.post("/replication/pause", tags=["replication"], dependencies=guarded)
    async def replication_pause(peer: str | None = None) -> Json:
        """Stop applying changes from a peer (all peers without ``peer``): a partition for drills."""
        replication.pause(peer)
        return replication.report()

    @app.post("/replication/resume", tags=["replication"], dependencies=guarded)
    async def replication_resume(peer: str | None = None) -> Json:
        replication.resume(peer)
        return replication.report()

    @app.get("/metrics", tags=["replication"], dependencies=guarded)
    async def metrics() -> Response:
        return Response(replication.metrics(), media_type="text/plain; version=0.0.4")

    return app


def _next(field: str, token: str | None) -> Json:
    """The next-page field, present only while more pages follow (AWS omits it at the end)."""
    return {} if token is None else {field: token}
