"""``/v1/provision`` (a device provisions itself with its enrollment's proof, no admin token) and
``/things/<name>/move`` (an operator gives a device a new home region)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.domain.network import join_forwarded
from geofleet.domain.rescoping import MAX_MOVE_REGIONS
from geofleet.provisioning.service import Provisioner, ProvisionRequest, Timings
from geofleet.region.routes.access import AdminAccess


class MoveIn(BaseModel):
    region: str = Field(max_length=64)
    regions: list[Annotated[str, Field(max_length=64)]] | None = Field(default=None, max_length=MAX_MOVE_REGIONS)
    """The device's permitted regions from now on (its residency scope); None: they stay."""


class ProvisionIn(BaseModel):
    deviceId: str = Field(max_length=128)
    certificateSigningRequest: str = Field(max_length=16 * 1024)
    enrollmentGroup: str | None = Field(default=None, max_length=128)
    """Omitted for a device with an individual enrollment."""
    timestamp: int
    signature: str = Field(max_length=128)


def router(provisioner: Provisioner, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["provisioning"])

    @routes.post("/v1/provision", status_code=201)
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

    @routes.post("/things/{name}/move", dependencies=access.guard)
    async def move_device(name: str, body: MoveIn) -> Json:
        """Give a device a new home region (and, with ``regions``, new permitted regions);
        answers its new endpoint order. 421 with ``regions`` when only another region may make
        this move (one in both the old and the new scope), 400 when none may in one step."""
        return provisioner.move(name, body.region, body.regions)

    return routes
