"""``/things``: AWS IoT's things and their principals (attached certificates).

A thing of a device whose residency scope leaves this region out is held here as its stub
(``domain.residency``): describe, update and delete answer 421 with the regions to ask, since
the stub is not the thing and an update built on it would erase its attributes everywhere. The
listing shows stubs as they are (name, type, version, the global attributes): it says which
devices exist and where they live, nothing more. A write that changes ``geofleet:regions`` must
be made in a region of both the old and the new scope (``domain.rescoping``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from geofleet.domain.json_types import Json
from geofleet.domain.paging import MAX_TOKEN_LENGTH, page_of
from geofleet.domain.registry_rules import merge_attributes
from geofleet.domain.rescoping import check_rescope
from geofleet.domain.residency import Scope
from geofleet.region.routes.access import UNSIZED_PAGE, AdminAccess, next_field
from geofleet.region.routes.params import Thing
from geofleet.services.registry import Registry
from geofleet.services.residency import Residency

MAX_THINGS_PAGE = 250
"""AWS ListThings' largest ``maxResults``."""


class ThingIn(BaseModel):
    thingTypeName: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)


class ThingUpdate(BaseModel):
    attributes: dict[str, str | None] | None = None
    merge: bool = True
    thingTypeName: str | None = None
    removeThingType: bool = False
    expectedVersion: int | None = None


def router(region: str, registry: Registry, residency: Residency, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["things"], dependencies=access.guard)

    @routes.get("/things")
    async def list_things(maxResults: Annotated[int | None, Query(ge=1, le=MAX_THINGS_PAGE)] = None,
                          nextToken: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListThings paging: at most ``maxResults`` things in name order, and ``nextToken``
        while more follow (without ``maxResults``: pages of ``UNSIZED_PAGE``)."""
        size = maxResults or UNSIZED_PAGE
        rows = registry.things.all(access.pages.decode("things", nextToken), size + 1)
        page = page_of(rows, size, lambda t: str(t["thingName"]), "things", access.pages)
        return {"things": page.items, **next_field("nextToken", page.next_token)}

    @routes.post("/things/{thing}", status_code=201)
    async def create_thing(thing: Thing, body: ThingIn | None = None) -> Json:
        body = body or ThingIn()
        residency.check_here(thing)
        check_rescope(thing, Scope.everywhere(), Scope.of_thing({"attributes": body.attributes}), region)
        return registry.things.create(thing, body.thingTypeName, body.attributes)

    @routes.get("/things/{thing}")
    async def describe_thing(thing: Thing) -> Json:
        residency.check_here(thing)
        return registry.things.describe(thing)

    @routes.patch("/things/{thing}")
    async def update_thing(thing: Thing, body: ThingUpdate) -> Json:
        residency.check_here(thing)
        if body.attributes is not None:
            current = registry.things.describe(thing)
            after = merge_attributes(current.get("attributes") or {}, body.attributes, body.merge)
            check_rescope(thing, Scope.of_thing(current), Scope.of_thing({"attributes": after}), region)
        return registry.things.update(thing, attributes=body.attributes, merge=body.merge,
                                      type_name=body.thingTypeName, remove_type=body.removeThingType,
                                      expected_version=body.expectedVersion)

    @routes.delete("/things/{thing}", status_code=204)
    async def delete_thing(thing: Thing, expectedVersion: int | None = None) -> None:
        residency.check_here(thing)
        registry.things.delete(thing, expectedVersion)

    @routes.get("/things/{thing}/principals")
    async def list_principals(thing: Thing) -> Json:
        registry.things.describe(thing)
        return {"principals": registry.principals.of_thing(thing)}

    @routes.put("/things/{thing}/principals/{cert_id}", status_code=204)
    async def attach_principal(thing: Thing, cert_id: str) -> None:
        registry.principals.attach(thing, cert_id)

    @routes.delete("/things/{thing}/principals/{cert_id}", status_code=204)
    async def detach_principal(thing: Thing, cert_id: str) -> None:
        registry.principals.detach(thing, cert_id)

    return routes
