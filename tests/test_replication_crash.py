"""A region SIGKILLed in the middle of a replication stream restarts, resumes from its stored
positions and converges; nothing any region acknowledged is lost."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import REGIONS, restarted_region, start_fleet
from tests.helpers import wait_for
from tests.test_replication import same_everywhere

A, B, C = REGIONS


@pytest.mark.e2e
def test_sigkill_mid_stream_then_restart_converges(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path / "data")
    try:
        with fleet.admin(B) as api:
            for i in range(50):
                api.call("POST", f"/things/from-b-{i}", json={})
        written: list[str] = []
        killed = threading.Event()

        def writer() -> None:
            with fleet.admin(A) as api:
                for i in range(300):
                    api.call("POST", f"/things/from-a-{i}", json={"attributes": {"i": str(i)}})
                    written.append(f"from-a-{i}")
                    if i == 100:
                        os.kill(int(str(fleet.region(B)["pid"])), signal.SIGKILL)
                        killed.set()

        thread = threading.Thread(target=writer)
        thread.start()
        thread.join(120)
        assert killed.is_set()
        assert len(written) == 300

        with restarted_region(fleet, B):
            listing = same_everywhere(fleet, "/things", 60, "every region to list the same things after the restart")
            names = {t["thingName"] for t in listing["things"]}
            assert set(written) <= names
            assert {f"from-b-{i}" for i in range(50)} <= names, "B's acknowledged writes survived its SIGKILL"
            for region in REGIONS:
                with fleet.admin(region) as api:
                    api.call("POST", "/replication/sync")
            for region in REGIONS:
                with fleet.admin(region) as api:
                    api.call("POST", "/replication/sync")
                    links = api.call("GET", "/replication/status")["links"]
                assert all(link["digestsAgree"] for link in links.values()), (region, links)
    finally:
        fleet.stop()
    wait_for(lambda: not fleet.data.cluster_file.exists(), 5, "cluster.json removed")
