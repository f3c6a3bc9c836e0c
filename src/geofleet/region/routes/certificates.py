"""``/certificates``: device certificates (from a CSR or registered), their status, and what
they are attached to."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.domain.paging import MAX_TOKEN_LENGTH, page_of
from geofleet.domain.records import CertificateStatus
from geofleet.pki.ca import load_cert, load_csr
from geofleet.region.routes.access import UNSIZED_PAGE, AdminAccess, next_field
from geofleet.services.registry import Registry

MAX_CERTIFICATES_PAGE = 250
"""AWS ListCertificates' largest ``pageSize``."""


class CsrIn(BaseModel):
    certificateSigningRequest: str = Field(max_length=16 * 1024)
    setAsActive: bool = False


class CertificateIn(BaseModel):
    certificatePem: str = Field(max_length=16 * 1024)
    status: CertificateStatus = CertificateStatus.ACTIVE


class StatusIn(BaseModel):
    newStatus: CertificateStatus


def router(registry: Registry, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["certificates"], dependencies=access.guard)

    @routes.get("/certificates")
    async def list_certificates(pageSize: Annotated[int | None, Query(ge=1, le=MAX_CERTIFICATES_PAGE)] = None,
                                marker: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListCertificates paging: at most ``pageSize`` certificates in id order, and
        ``nextMarker`` while more follow (without ``pageSize``: pages of ``UNSIZED_PAGE``)."""
        size = pageSize or UNSIZED_PAGE
        rows = registry.certificates.all(access.pages.decode("certificates", marker), size + 1)
        page = page_of(rows, size, lambda c: str(c["certificateId"]), "certificates", access.pages)
        return {"certificates": page.items, **next_field("nextMarker", page.next_token)}

    @routes.post("/certificates/from-csr", status_code=201)
    async def create_from_csr(body: CsrIn) -> Json:
        return registry.certificates.create_from_csr(load_csr(body.certificateSigningRequest), body.setAsActive)

    @routes.post("/certificates", status_code=201)
    async def register_certificate(body: CertificateIn) -> Json:
        return registry.certificates.register(load_cert(body.certificatePem), body.status)

    @routes.get("/certificates/{cert_id}")
    async def describe_certificate(cert_id: str) -> Json:
        return registry.certificates.describe(cert_id)

    @routes.put("/certificates/{cert_id}/status")
    async def update_certificate(cert_id: str, body: StatusIn) -> Json:
        return registry.certificates.update(cert_id, body.newStatus)

    @routes.post("/certificates/{cert_id}/revoke")
    async def revoke_certificate(cert_id: str) -> Json:
        return registry.certificates.update(cert_id, CertificateStatus.REVOKED)

    @routes.delete("/certificates/{cert_id}", status_code=204)
    async def delete_certificate(cert_id: str) -> None:
        registry.certificates.delete(cert_id)

    @routes.get("/certificates/{cert_id}/policies")
    async def certificate_policies(cert_id: str) -> Json:
        registry.certificates.describe(cert_id)
        return {"policies": registry.policies.of(cert_id)}

    @routes.get("/certificates/{cert_id}/things")
    async def certificate_things(cert_id: str) -> Json:
        registry.certificates.describe(cert_id)
        return {"things": registry.principals.things_of(cert_id)}

    return routes
