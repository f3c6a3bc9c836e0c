"""``/v1/consumers``: durable application consumers (``domain/consumers.py``).

A consumer is created once (``PUT``, any region; it replicates) and read region by region:
``GET /v1/consumers/{name}/messages?after=<seq>`` answers *this* region's journal entries after
``seq`` that match the consumer's filters, long-polling up to ``wait`` seconds when there are
none; ``PUT /v1/consumers/{name}/offsets/{region}`` stores where the consumer got to in this
region (only this region's own offset: the region that holds the journal holds its offset).
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from geofleet.domain.consumers import MAX_FILTERS, READ_LIMIT_DEFAULT, WAIT_DEFAULT_S
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.services.consumers import Consumers
from geofleet.services.journal import Journal


class ConsumerIn(BaseModel):
    filters: list[str] = Field(max_length=MAX_FILTERS * 4)
    """Checked by ``domain.consumers.check_filters`` (for its messages); the bound here only
    keeps a huge list from being parsed at all."""


class OffsetIn(BaseModel):
    seq: int


def router(region: str, consumers: Consumers, journal: Journal, access: AdminAccess) -> APIRouter:
    routes = APIRouter(tags=["consumers"], dependencies=access.guard)

    @routes.get("/v1/consumers")
    async def list_consumers() -> Json:
        return {"consumers": consumers.all()}

    @routes.put("/v1/consumers/{name}")
    async def put_consumer(name: str, body: ConsumerIn, response: Response) -> Json:
        """Create a consumer or replace its filters; 201 when created."""
        consumer, created = consumers.put(name, body.filters)
        response.status_code = 201 if created else 200
        return consumer

    @routes.get("/v1/consumers/{name}")
    async def get_consumer(name: str) -> Json:
        return consumers.get(name)

    @routes.delete("/v1/consumers/{name}", status_code=204)
    async def delete_consumer(name: str) -> None:
        consumers.delete(name)

    @routes.get("/v1/consumers/{name}/messages")
    async def read_messages(name: str, after: int = 0, limit: Annotated[int, Query()] = READ_LIMIT_DEFAULT,
                            wait: float = WAIT_DEFAULT_S) -> Response:
        """This region's journal entries after ``after`` matching the consumer's filters;
        ``next`` is the position to read on from, ``dropped`` what retention removed unread.
        Encoded here (the body is plain JSON already): FastAPI's generic encoder walks every
        field of up to 1,000 entries, the larger part of a read's cost."""
        page = await journal.read(name, after, limit, wait)
        return Response(json.dumps(page.to_json(), separators=(",", ":")), media_type="application/json")

    @routes.get("/v1/consumers/{name}/offsets/{offset_region}")
    async def get_offset(name: str, offset_region: str) -> Json:
        _here(offset_region)
        return {"consumerName": name, "region": region, "seq": journal.offset(name)}

    @routes.put("/v1/consumers/{name}/offsets/{offset_region}")
    async def commit_offset(name: str, offset_region: str, body: OffsetIn) -> Json:
        _here(offset_region)
        return {"consumerName": name, "region": region, "seq": journal.commit(name, body.seq)}

    @routes.get("/v1/journal")
    async def journal_status() -> Json:
        return {"region": region, **journal.report()}

    def _here(offset_region: str) -> None:
        if offset_region != region:
            raise InvalidRequest(f"this is region {region}: the offset of {offset_region!r} is kept in "
                                 f"{offset_region!r}; send it there")

    return routes
