"""``geofleet up`` with real OS processes: cluster.json, SIGKILL of a region, restart with
``geofleet region run``, nothing acknowledged lost, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REGIONS, Fleet, restarted_region, start_fleet
from tests.helpers import wait_for


@pytest.mark.e2e
def test_sigkilled_region_restarts_with_everything_it_acknowledged(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path / "data")
    try:
        cluster: dict[str, Any] = fleet.cluster
        assert set(cluster["regions"]) == set(REGIONS)
        assert Path(cluster["root_ca"]).exists()
        assert Path(cluster["admin"]["token_file"]).exists()
        region = "eu-west-1"
        info = cluster["regions"][region]
        assert info["mqtt_port"] > 0
        assert info["http_url"].startswith("https://")

        device = fleet.create_device(region=region)
        with fleet.admin(region) as api:
            for i in range(200):
                api.call("POST", f"/things/bulk-{i}", json={"attributes": {"i": str(i)}})
            api.call("POST", f"/things/{device}/shadow", content=b'{"state":{"reported":{"n":1}}}')

        os.kill(info["pid"], signal.SIGKILL)
        wait_for(lambda: not _healthy(fleet, region), 10, "the killed region to stop answering")

        with restarted_region(fleet, region):
            wait_for(lambda: _healthy(fleet, region), 30, "the restarted region to answer")
            with fleet.admin(region) as api:
                names = {t["thingName"] for t in api.call("GET", "/things")["things"]}
                assert {f"bulk-{i}" for i in range(200)} <= names
                assert api.call("GET", f"/things/{device}/shadow")["state"]["reported"] == {"n": 1}
            with fleet.device(device, region).connect() as client:
                client.subscribe(f"$aws/things/{device}/shadow/#")
                got = client.request(f"$aws/things/{device}/shadow/get", "").json()
                assert got["version"] == 1
    finally:
        code = fleet.stop()
    assert code == 0
    assert not fleet.data.cluster_file.exists()
    assert f"region {region} exited" in (fleet.data.root / "up.log").read_text()


def _healthy(fleet: Fleet, region: str) -> bool:
    cluster: dict[str, Any] = fleet.cluster
    try:
        response = httpx.get(f"{cluster['regions'][region]['http_url']}/health", timeout=1,
                             verify=ssl.create_default_context(cafile=cluster["root_ca"]))
        return response.status_code == 200 and json.loads(response.text)["status"] == "ok"
    except httpx.HTTPError:
        return False
