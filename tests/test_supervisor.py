"""``geofleet up`` keeps its regions running and ``cluster.json`` true (issue 13, item 8): real
``geofleet up`` and region processes, real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from geofleet.config import DataDir, default_config
from geofleet.pki.fleet import initialize
from geofleet.supervisor import RESTART_BACKOFF_S, Supervisor
from tests.helpers import geofleet, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pid(data: DataDir, region: str) -> int:
    return int(json.loads(data.cluster_file.read_text())["regions"][region]["pid"])


def _serves(data: DataDir, region: str) -> bool:
    url = data.config().region(region).http_url
    try:
        tls = ssl.create_default_context(cafile=str(data.root_ca))
        return httpx.get(f"{url}/health", verify=tls, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.e2e
def test_up_restarts_a_killed_region_and_keeps_cluster_json_true(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "fleet")
    initialize(data, default_config(free_ports=True, regions=("us-east-1", "eu-west-1")))
    up = subprocess.Popen([sys.executable, "-m", "geofleet", "up", "--data-dir", str(data.root)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(data.cluster_file.exists, 60, "the fleet ready")
        first = _pid(data, "eu-west-1")
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (pid := _pid(data, "eu-west-1")) != first and _alive(pid) and pid, 30,
                          "a new eu-west-1 process in cluster.json")
        wait_for(lambda: _serves(data, "eu-west-1"), 60, "eu-west-1 serving again")

        by_hand = geofleet("region", "run", "eu-west-1", "--data-dir", str(data.root), check=False)
        assert by_hand.returncode == 2
        assert "geofleet region restart eu-west-1" in by_hand.stderr

        restarted = geofleet("region", "restart", "eu-west-1", "--data-dir", str(data.root), timeout=90)
        third = _pid(data, "eu-west-1")
        assert third not in (first, second)
        assert f"pid {third}" in restarted.stdout
        assert _serves(data, "eu-west-1")
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=30)[0].decode()
    assert "region eu-west-1 exited with code -9; restarting in 0 s" in output
    assert not data.cluster_file.exists()
    assert not _alive(third)


@pytest.mark.e2e
def test_a_region_that_keeps_failing_is_restarted_with_a_growing_backoff(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "fleet")
    said: list[str] = []

    def crash(_: str) -> subprocess.Popen[bytes]:  # a real process that fails at once, as a broken region would
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])

    supervisor = Supervisor(data, crash, restart=True, say=said.append)
    supervisor.start("us-east-1")

    def three_restarts() -> bool:
        supervisor.tend()
        return len([line for line in said if "restarting in" in line]) >= 3

    wait_for(three_restarts, 30, "three restarts")
    delays = [line.rsplit("restarting in ", 1)[1] for line in said if "restarting in" in line][:3]
    assert delays == [f"{d:g} s" for d in RESTART_BACKOFF_S[:3]]
    for child in supervisor.children.values():
        child.process.wait()


@pytest.mark.e2e
def test_restart_without_a_supervisor_is_a_clear_error(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "fleet")
    initialize(data, default_config(free_ports=True, regions=("us-east-1",)))
    result = geofleet("region", "restart", "us-east-1", "--data-dir", str(data.root), check=False)
    assert result.returncode == 2
    assert "no running 'geofleet up'" in result.stderr
