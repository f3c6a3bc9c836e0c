"""``/health`` (open: load balancers, GSLBs, peers and ``FleetApp`` call it): this region's deep
health and its view of its peers; 200 while it serves devices, 503 when it cannot."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from geofleet.region.health import Health


def router(health: Health) -> APIRouter:
    routes = APIRouter(tags=["health"])

    @routes.get("/health")
    async def get_health() -> JSONResponse:
        report = await health.report()
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    return routes
