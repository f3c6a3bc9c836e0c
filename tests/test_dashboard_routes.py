"""The dashboard's routes in-process (the app over httpx's ASGI transport, no sockets): what is
served without the token (the page and its bundled assets only), what needs it (the fleet
layout), that no request reaches a file outside the bundled table, and that the page loads
nothing from another origin (works offline)."""

from __future__ import annotations

import asyncio
import re

import httpx

from geofleet.config import default_config
from geofleet.region.api import create_app
from geofleet.region.routes import dashboard
from geofleet.region.routes.access import AdminAccess

TOKEN = "t0ken"
ASSETS = dashboard.bundled_assets()


def get(path: str, token: str | None = None) -> httpx.Response:
    fleet = default_config()
    access = AdminAccess(TOKEN)
    app = create_app("us-east-1", access, [dashboard.router("us-east-1", fleet, access, ASSETS)])

    async def call() -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://region") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


def test_the_page_is_served_without_the_token_with_a_same_origin_policy() -> None:
    for path in ("/dashboard", "/dashboard/", "/dashboard/index.html"):
        page = get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = get("/dashboard/main.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")


def test_the_fleet_layout_needs_the_token() -> None:
    refused = get("/dashboard/fleet.json")
    assert refused.status_code == 401
    assert "admin token" in refused.json()["message"]
    assert get("/dashboard/fleet.json", "wrong").status_code == 401
    layout = get("/dashboard/fleet.json", TOKEN).json()
    assert layout["region"] == "us-east-1"
    assert layout["homeDefault"] == "us-east-1"
    assert [r["name"] for r in layout["regions"]] == ["us-east-1", "eu-west-1", "ap-southeast-1"]
    assert all(-90 <= r["latitude"] <= 90 and -180 <= r["longitude"] <= 180 for r in layout["regions"])


def test_only_bundled_files_are_served() -> None:
    for path in ("/dashboard/vendor.sh", "/dashboard/VENDOR.md", "/dashboard/vendor/LICENSE.leaflet",
                 "/dashboard/../../config.py", "/dashboard/%2e%2e/%2e%2e/config.py", "/dashboard/nope.js"):
        answer = get(path)
        assert answer.status_code == 404, path
        assert answer.json()["message"].startswith("no "), path  # "no dashboard file", "no route"


def test_every_asset_the_page_names_is_bundled_and_local() -> None:
    """Works offline: every src/href/import is a path on this origin that the table holds."""
    names: set[str] = set()
    for path, (content, _media) in ASSETS.items():
        if not (path.endswith(".html") or (path.endswith(".js") and "/" not in path)):
            continue
        text = content.decode()
        names.update(re.findall(r'(?:src|href)="([^"#]+)"', text))
        names.update(re.findall(r'from "(\./[^"]+)"', text))
        names.update(re.findall(r'fetch\("(/dashboard/[^"]+)"\)', text))
    assert names, "no references found: the pattern is stale"
    for name in names:
        assert not re.match(r"^[a-z]+:|^//", name), f"{name} is on another origin"
        local = name.removeprefix("/dashboard/").removeprefix("./")
        assert local in ASSETS, f"{name} is named by the page but not bundled"
    for vendored in ("vendor/leaflet.js", "vendor/topojson-client.min.js", "vendor/uPlot.iife.min.js",
                     "vendor/countries-110m.json", "vendor/leaflet.css"):
        assert vendored in ASSETS
