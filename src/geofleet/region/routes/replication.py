"""``/replication/*`` and ``/metrics``: the operator's view and controls of replication (status,
an anti-entropy round now, pausing a peer for drills)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter, Response

from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess
from geofleet.replication.service import Replication


def router(replication: Replication, access: AdminAccess, more_metrics: Sequence[Callable[[], bytes]] = ()
           ) -> APIRouter:
    """``more_metrics``: other parts' Prometheus text (the consumer journal), served after
    replication's on the same ``/metrics``."""
    routes = APIRouter(tags=["replication"], dependencies=access.guard)

    @routes.get("/replication/status")
    async def replication_status() -> Json:
        return replication.report()

    @routes.post("/replication/sync")
    async def replication_sync() -> Json:
        """Run anti-entropy with every peer now."""
        return {"peers": await replication.sync()}

    @routes.post("/replication/pause")
    async def replication_pause(peer: str | None = None) -> Json:
        """Stop applying changes from a peer (all peers without ``peer``): a partition for drills."""
        replication.pause(peer)
        return replication.report()

    @routes.post("/replication/resume")
    async def replication_resume(peer: str | None = None) -> Json:
        replication.resume(peer)
        return replication.report()

    @routes.get("/metrics")
    async def metrics() -> Response:
        text = b"".join([replication.metrics(), *(part() for part in more_metrics)])
        return Response(text, media_type="text/plain; version=0.0.4")

    return routes
