"""``/enrollment-groups`` and ``/enrollments``: who may provision (groups, individual devices),
their claim certificates for fleet provisioning over MQTT, and their revocation."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.domain.policy import DEFAULT_POLICY_NAME
from geofleet.pki.ca import load_csr
from geofleet.region.routes.access import AdminAccess
from geofleet.region.routes.certificates import CsrIn
from geofleet.services.registry import Registry


class EnrollmentGroupIn(BaseModel):
    policyName: str = DEFAULT_POLICY_NAME
    thingTypeName: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    allowedRegions: list[str] | None = None
    reprovision: bool = False
    requireCsr: bool = False
    """Refuse AWS fleet provisioning's CreateKeysAndCertificate (the region making the key)."""


def router(registry: Registry, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["provisioning"], dependencies=access.guard)

    @routes.get("/enrollment-groups")
    async def list_groups() -> Json:
        return {"enrollmentGroups": registry.enrollments.all()}

    @routes.post("/enrollment-groups/{name}", status_code=201)
    async def create_group(name: str, body: EnrollmentGroupIn | None = None) -> Json:
        """Create a group; the answer holds its secret key, shown this once."""
        body = body or EnrollmentGroupIn()
        return registry.enrollments.create(name, policy=body.policyName, thing_type=body.thingTypeName,
                                           attributes=body.attributes, allowed_regions=body.allowedRegions,
                                           reprovision=body.reprovision, require_csr=body.requireCsr)

    @routes.get("/enrollments")
    async def list_enrollments() -> Json:
        return {"enrollments": registry.enrollments.all(individual=True)}

    @routes.post("/enrollments/{device_id}", status_code=201)
    async def create_enrollment(device_id: str, body: EnrollmentGroupIn | None = None) -> Json:
        """Allow one device id to provision, with its own key (shown this once)."""
        body = body or EnrollmentGroupIn()
        return registry.enrollments.create(device_id, policy=body.policyName, thing_type=body.thingTypeName,
                                           attributes=body.attributes, allowed_regions=body.allowedRegions,
                                           reprovision=body.reprovision, individual=True)

    @routes.post("/enrollments/{device_id}/revoke")
    async def revoke_enrollment(device_id: str) -> Json:
        return registry.enrollments.revoke(device_id, individual=True)

    @routes.post("/enrollment-groups/{name}/claim-certificate", status_code=201)
    async def claim_certificate(name: str, body: CsrIn) -> Json:
        """A claim certificate for AWS-style fleet provisioning over MQTT, from a CSR."""
        return registry.enrollments.create_claim_certificate(name, load_csr(body.certificateSigningRequest))

    @routes.post("/enrollment-groups/{name}/revoke")
    async def revoke_group(name: str) -> Json:
        return registry.enrollments.revoke(name)

    return routes
