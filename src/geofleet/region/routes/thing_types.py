"""``/thing-types``: AWS IoT's thing types (create, describe, deprecate, delete)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.services.registry import Registry


class ThingTypeIn(BaseModel):
    description: str = Field(default="", max_length=2028)
    searchableAttributes: list[str] = Field(default_factory=list, max_length=3)


def router(registry: Registry, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["thing types"], dependencies=access.guard)

    @routes.get("/thing-types")
    async def list_types() -> Json:
        return {"thingTypes": registry.thing_types.all()}

    @routes.post("/thing-types/{name}", status_code=201)
    async def create_type(name: str, body: ThingTypeIn | None = None) -> Json:
        body = body or ThingTypeIn()
        return registry.thing_types.create(name, body.description, body.searchableAttributes)

    @routes.get("/thing-types/{name}")
    async def describe_type(name: str) -> Json:
        return registry.thing_types.describe(name)

    @routes.post("/thing-types/{name}/deprecate")
    async def deprecate_type(name: str, undo: bool = False) -> Json:
        return registry.thing_types.deprecate(name, undo)

    @routes.delete("/thing-types/{name}", status_code=204)
    async def delete_type(name: str) -> None:
        registry.thing_types.delete(name)

    return routes
