"""``/registrationcode`` and ``/cacertificate``: customer CAs for just-in-time registration, in
AWS IoT's shapes (GetRegistrationCode, RegisterCACertificate, DescribeCACertificate,
ListCACertificates, UpdateCACertificate, DeleteCACertificate)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from geofleet.domain.jitr import AutoRegistration, CaStatus
from geofleet.domain.json_types import Json
from geofleet.pki.ca import load_cert
from geofleet.region.routes.access import AdminAccess
from geofleet.services.ca_certificates import CaCertificates

MAX_PEM = 16 * 1024


class RegisterCaIn(BaseModel):
    caCertificate: str = Field(max_length=MAX_PEM)
    verificationCertificate: str | None = Field(default=None, max_length=MAX_PEM)
    setAsActive: bool = False
    allowAutoRegistration: bool = False
    registrationConfig: dict[str, Any] | None = None


def router(cas: CaCertificates, registration_code: str, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["ca certificates"], dependencies=access.guard)

    @routes.get("/registrationcode")
    async def get_registration_code() -> Json:
        """The code to put in a verification certificate's subject CN (the same in every region)."""
        return {"registrationCode": registration_code}

    @routes.post("/cacertificate", status_code=201)
    async def register_ca(body: RegisterCaIn) -> Json:
        verification = load_cert(body.verificationCertificate) if body.verificationCertificate else None
        return cas.register(load_cert(body.caCertificate), verification, registration_code,
                            set_active=body.setAsActive, allow_auto_registration=body.allowAutoRegistration,
                            registration_config=body.registrationConfig)

    @routes.get("/cacertificates")
    async def list_cas() -> Json:
        return {"certificates": cas.all()}

    @routes.get("/cacertificate/{ca_id}")
    async def describe_ca(ca_id: str) -> Json:
        return cas.describe(ca_id)

    @routes.put("/cacertificate/{ca_id}")
    async def update_ca(ca_id: str, newStatus: CaStatus | None = None,
                        newAutoRegistrationStatus: AutoRegistration | None = None) -> Json:
        return cas.update(ca_id, newStatus, newAutoRegistrationStatus)

    @routes.delete("/cacertificate/{ca_id}", status_code=204)
    async def delete_ca(ca_id: str) -> None:
        cas.delete(ca_id)

    @routes.get("/certificates-by-ca/{ca_id}")
    async def certificates_by_ca(ca_id: str) -> Json:
        """AWS ListCertificatesByCA."""
        cas.describe(ca_id)
        return {"certificates": [{k: v for k, v in (r.body or {}).items() if k != "certificatePem"}
                                 for r in cas.certificates_of(ca_id)]}

    return routes
