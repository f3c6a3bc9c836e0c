"""Device shadows on AWS's data-plane paths (``/things/<thing>/shadow``,
``ListNamedShadowsForThing``).

A device's shadows rest only in its residency scope's regions: elsewhere every route here answers
421 with the regions to ask (``Residency.check_here``), never an empty or stale shadow."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from geofleet.domain.json_types import Json
from geofleet.domain.paging import MAX_TOKEN_LENGTH, page_of
from geofleet.region.routes.access import UNSIZED_PAGE, AdminAccess, next_field
from geofleet.region.routes.params import Shadow, Thing
from geofleet.services.residency import Residency
from geofleet.services.shadows import ShadowService

MAX_SHADOWS_PAGE = 100
"""AWS ListNamedShadowsForThing's largest ``pageSize``."""


def router(shadows: ShadowService, residency: Residency, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["shadows"], dependencies=access.guard)

    @routes.get("/things/{thing}/shadow")
    async def get_shadow(thing: Thing, name: Shadow) -> Json:
        residency.check_here(thing)
        return shadows.get(thing, name)

    @routes.post("/things/{thing}/shadow",
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"type": "object", "description": "AWS shadow update document"}}}}})
    async def update_shadow(thing: Thing, request: Request, name: Shadow) -> Json:
        residency.check_here(thing)
        return await shadows.update(thing, name, await request.body())

    @routes.delete("/things/{thing}/shadow")
    async def delete_shadow(thing: Thing, name: Shadow) -> Json:
        residency.check_here(thing)
        return await shadows.delete(thing, name)

    @routes.get("/api/things/shadow/ListNamedShadowsForThing/{thing}")
    async def list_named_shadows(thing: Thing,
                                 pageSize: Annotated[int | None, Query(ge=1, le=MAX_SHADOWS_PAGE)] = None,
                                 nextToken: Annotated[str | None, Query(max_length=MAX_TOKEN_LENGTH)] = None) -> Json:
        """AWS ListNamedShadowsForThing: ``results`` (names, classic shadow excluded),
        ``nextToken`` while more follow, ``timestamp``."""
        residency.check_here(thing)
        size = pageSize or UNSIZED_PAGE
        listing = f"shadows/{thing}"
        names = shadows.names_after(thing, access.pages.decode(listing, nextToken), size + 1)
        page = page_of(names, size, str, listing, access.pages)
        return {"results": page.items, **next_field("nextToken", page.next_token), "timestamp": int(time.time())}

    return routes
