"""``/policies``: AWS IoT policies and the certificates they are attached to."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.services.registry import Registry


class PolicyIn(BaseModel):
    policyDocument: str = Field(max_length=20 * 1024)


def router(registry: Registry, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["policies"], dependencies=access.guard)

    @routes.get("/policies")
    async def list_policies() -> Json:
        return {"policies": registry.policies.all()}

    @routes.post("/policies/{name}", status_code=201)
    async def create_policy(name: str, body: PolicyIn) -> Json:
        return registry.policies.create(name, body.policyDocument)

    @routes.put("/policies/{name}")
    async def replace_policy(name: str, body: PolicyIn) -> Json:
        return registry.policies.replace(name, body.policyDocument)

    @routes.get("/policies/{name}")
    async def get_policy(name: str) -> Json:
        return registry.policies.get(name)

    @routes.delete("/policies/{name}", status_code=204)
    async def delete_policy(name: str) -> None:
        registry.policies.delete(name)

    @routes.get("/policies/{name}/targets")
    async def policy_targets(name: str) -> Json:
        registry.policies.get(name)
        return {"targets": registry.policies.targets(name)}

    @routes.put("/policies/{name}/targets/{cert_id}", status_code=204)
    async def attach_policy(name: str, cert_id: str) -> None:
        registry.policies.attach(name, cert_id)

    @routes.delete("/policies/{name}/targets/{cert_id}", status_code=204)
    async def detach_policy(name: str, cert_id: str) -> None:
        registry.policies.detach(name, cert_id)

    return routes
