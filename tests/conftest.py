"""A real three-region fleet (``geofleet up`` in a subprocess) shared by the MQTT and HTTP tests."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from geofleet.client import AdminClient
from geofleet.config import DataDir
from tests.helpers import Device, geofleet, wait_for, write_config

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
_names = itertools.count()


@dataclass
class Fleet:
    data: DataDir
    cluster: dict[str, Any]
    process: subprocess.Popen[bytes]
    devices_dir: Path

    def admin(self, region: str = "us-east-1") -> AdminClient:
        return AdminClient(self.data, region)

    def port(self, region: str) -> int:
        return int(self.cluster["regions"][region]["mqtt_port"])

    def new_name(self, prefix: str = "dev") -> str:
        return f"{prefix}-{next(_names)}"

    def create_device(self, name: str | None = None, region: str = "us-east-1") -> str:
        name = name or self.new_name()
        geofleet("device", "create", name, "--data-dir", str(self.data.root), "--region", region,
                 "--out", str(self.devices_dir))
        return name

    def device(self, name: str, region: str = "us-east-1", client_id: str | None = None, **kw: Any) -> Device:
        return Device(client_id or name, self.port(region), self.devices_dir / "root-ca.pem",
                      self.devices_dir / f"{name}.cert.pem", self.devices_dir / f"{name}.key.pem", **kw)

    def cert_id(self, name: str, region: str = "us-east-1") -> str:
        with self.admin(region) as api:
            return str(api.call("GET", f"/things/{name}/principals")["principals"][0])


def start_fleet(root: Path, regions: list[str]) -> Fleet:
    config = write_config(root.parent / f"{root.name}-config.json", regions)
    geofleet("init", "--data-dir", str(root), "--config", str(config))
    process = subprocess.Popen([sys.executable, "-m", "geofleet", "up", "--data-dir", str(root)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    data = DataDir(root)
    wait_for(lambda: data.cluster_file.exists() or process.poll() is not None, 60, "cluster.json")
    if process.poll() is not None:
        raise RuntimeError(f"geofleet up exited: {process.stdout.read() if process.stdout else ''!r}")
    cluster = json.loads(data.cluster_file.read_text())
    devices = root / "devices"
    devices.mkdir()
    return Fleet(data, cluster, process, devices)


def stop_fleet(fleet: Fleet) -> int:
    fleet.process.send_signal(signal.SIGTERM)
    return fleet.process.wait(30)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    running = start_fleet(tmp_path_factory.mktemp("fleet") / "data", REGIONS)
    yield running
    stop_fleet(running)
