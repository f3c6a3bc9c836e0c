"""``/dashboard``: the operator's fleet dashboard, a static page bundled in the package
(``geofleet/data/dashboard``) that the browser fills from this region's own admin API.

The page and its assets are served without the token (they hold no data: a login form, scripts,
the vendored map and chart libraries and a world outline); every piece of fleet data comes from
the guarded admin routes the CLI and the SDKs use (``/health``, ``/replication/status``,
``/v1/presence``, ``/things``, shadows, ``/v1/stream``), with the token the operator types in.
There is no second data path: the one route added here, ``/dashboard/fleet.json``, is guarded
and answers only the fleet's static layout (region names and coordinates), which no other
route exposes and the map needs.

Assets are looked up in a fixed table built at startup from the package directory, never by
joining a request path to a file path, so no request can name a file outside it. Every answer
carries a strict Content-Security-Policy (``'self'`` only): the page cannot load or send
anything to another origin, which is both the "works offline" promise and a guard against a
device name or payload that tries to inject markup.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Response

from geofleet.config import FleetConfig
from geofleet.domain.errors import NotFound
from geofleet.domain.json_types import Json
from geofleet.region.routes.access import AdminAccess

PACKAGE_DIR = "data/dashboard"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".json": "application/json", ".png": "image/png",
               ".svg": "image/svg+xml"}
"""The only kinds of file served; anything else in the directory (vendor.sh, VENDOR.md,
licenses) stays unserved."""
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""``style-src 'unsafe-inline'``: Leaflet positions its panes with inline styles; scripts stay
``'self'`` only."""


def bundled_assets(root: Traversable | None = None) -> dict[str, tuple[bytes, str]]:
    """Every servable file of the dashboard directory: relative path -> (content, media type),
    read once so a request is a dictionary lookup."""
    base = root if root is not None else resources.files("geofleet").joinpath(PACKAGE_DIR)
    assets: dict[str, tuple[bytes, str]] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            path = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, f"{path}/")
                continue
            media = MEDIA_TYPES.get("." + child.name.rsplit(".", 1)[-1]) if "." in child.name else None
            if media is not None:
                assets[path] = (child.read_bytes(), media)

    walk(base, "")
    return assets


def fleet_layout(region: str, fleet: FleetConfig) -> Json:
    """What the map needs and no route already answers: each region's place on the globe."""
    return {"region": region, "homeDefault": fleet.home_default,
            "regions": [{"name": r.name, "latitude": r.latitude, "longitude": r.longitude}
                        for r in fleet.regions]}


def router(region: str, fleet: FleetConfig, access: AdminAccess,
           assets: dict[str, tuple[bytes, str]] | None = None) -> APIRouter:
    routes = APIRouter(tags=["dashboard"])
    served = assets if assets is not None else bundled_assets()
    layout = fleet_layout(region, fleet)

    def answer(path: str) -> Response:
        found = served.get(path)
        if found is None:
            raise NotFound(f"no dashboard file {path!r}; open /dashboard/")
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    @routes.get("/dashboard", include_in_schema=False)
    async def page() -> Response:
        return answer("index.html")

    @routes.get("/dashboard/fleet.json", dependencies=access.guard)
    async def fleet_json() -> Json:
        """The fleet's regions and their coordinates (the map's markers)."""
        return layout

    @routes.get("/dashboard/{path:path}", include_in_schema=False)
    async def asset(path: str) -> Response:
        return answer(path or "index.html")

    return routes
