"""The region's HTTP API (FastAPI; OpenAPI at ``/openapi.json`` and ``/docs``): one app that
mounts the routers of ``region/routes`` (one per resource), built by the node.

Every route needs the fleet's admin token (``Authorization: Bearer ...``) except ``/health``
and ``/v1/endpoints/<device>`` (health checkers and devices call them) and ``/v1/provision``
(which checks the device's enrollment signature instead).
Errors come back as ``{"code": ..., "message": ...}`` with a 4xx status (``http_errors``, shared
with the replication peer app); shadow routes use AWS's shadow error codes and messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Response
from fastapi.openapi.docs import get_swagger_ui_html

from geofleet.body_limit import BodyLimit
from geofleet.domain.json_types import Json
from geofleet.http_errors import install_error_shape
from geofleet.region.routes.access import AdminAccess

MAX_BODY_BYTES = 64 * 1024


def create_app(region: str, access: AdminAccess, routers: Sequence[APIRouter]) -> FastAPI:
    """The app serving ``routers`` in order, with the error shape, the body limit and the
    admin-only OpenAPI document and docs page."""
    app = FastAPI(title=f"geofleet region {region}", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    install_error_shape(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # outermost: before routing and authentication

    @app.get("/openapi.json", include_in_schema=False, dependencies=access.guard)
    async def openapi() -> Json:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=access.guard)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    for router in routers:
        app.include_router(router)
    return app
