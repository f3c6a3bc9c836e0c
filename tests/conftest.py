"""A real three-region fleet (``geofleet up`` in a subprocess) shared by the MQTT and HTTP tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from geofleet.client import AdminClient
from geofleet.cluster import LocalFleet, spawn_region
from geofleet.domain.errors import GeofleetError
from tests.helpers import Device, geofleet, wait_for

# Property tests are judged by their examples, not their speed: a loaded CI machine must not turn
# a slow example into a failure (hypothesis' default deadline is 200 ms per example). "geofleet"
# (``make test``) runs each property's full count; "quick" (``make test-unit``, run while
# editing) a tenth of it (``tests.helpers.examples`` scales the explicit counts too).
settings.register_profile("geofleet", deadline=None)
settings.register_profile("quick", deadline=None, max_examples=10)
settings.load_profile("geofleet")

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]

# The fixtures that start region processes, brokers or fleets: a test that uses one (directly or
# through another fixture) is an end-to-end test. Tests that start a fleet inline carry
# ``@pytest.mark.e2e`` themselves; everything else is a unit test, and `make test-unit` runs
# ``-m "not e2e"``. A module may mix both: the mark is per test, never per file.
E2E_FIXTURES = frozenset({"fleet", "ffleet", "cfleet", "hfleet", "pfleet", "rfleet", "afleet", "real_region", "pair",
                          "short_memory", "one_region", "broker", "efleet"})

# What a unit test must not do: reach the network or start a process. The unit run checks it
# (see ``_unit_stays_in_process``), so a test that starts a fleet without the mark fails there
# instead of silently slowing the fast run down.
_OUTSIDE_EVENTS = frozenset({"socket.connect", "socket.bind", "subprocess.Popen", "os.fork", "os.posix_spawn"})
_outside: list[str] = []
_watching = False
_earlier_threads: frozenset[int] = frozenset()
"""Threads alive before the test began (a client loop an earlier end-to-end test left
reconnecting, say): what they do is not the unit test's doing, so it is not held against it."""


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _watching and event in _OUTSIDE_EVENTS and threading.get_ident() not in _earlier_threads:
        _outside.append(f"{event}{args[:2]!r}")


sys.addaudithook(_audit)


CHROMIUM = Path(os.environ.get("GEOFLEET_CHROMIUM", "/usr/bin/chromium"))
"""The system browser the ``browser`` tests drive (Debian's ``chromium``; `.ci/run` installs it)."""
_NO_CHROMIUM = (f"no Chromium at {CHROMIUM}: the dashboard's browser tests are skipped "
                "(apt-get install chromium, or set GEOFLEET_CHROMIUM)")


def pytest_report_header() -> str | None:
    return None if CHROMIUM.exists() else _NO_CHROMIUM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("browser") is not None and not CHROMIUM.exists():
            item.add_marker(pytest.mark.skip(reason=_NO_CHROMIUM))  # only these: nothing else is skipped


@pytest.fixture(autouse=True)
def _unit_stays_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that is not marked ``e2e`` but opens a socket or starts a process."""
    global _watching
    if request.node.get_closest_marker("e2e") is not None:
        yield
        return
    global _earlier_threads
    _earlier_threads = frozenset(t.ident for t in threading.enumerate()
                                 if t is not threading.main_thread() and t.ident is not None)
    _outside.clear()
    _watching = True
    try:
        yield
    finally:
        _watching = False
    if _outside:
        pytest.fail(f"a unit test reached outside the process (mark it e2e): {_outside[:3]}")
_names = itertools.count()


class Fleet(LocalFleet):
    """The fleet plus what the tests do with it: devices, admin clients, ports."""

    @property
    def devices_dir(self) -> Path:
        path = self.data.root / "devices"
        path.mkdir(exist_ok=True)
        return path

    def admin(self, region: str = "us-east-1") -> AdminClient:
        return AdminClient(self.data, region)

    def port(self, region: str) -> int:
        return int(str(self.region(region)["mqtt_port"]))

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

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every region answers ``/health`` ``ok`` (itself and every peer healthy, as it
        sees them): a region that has not yet seen a peer healthy skips it when it provisions,
        so tests of where a device lands start from a fleet that agrees it is whole."""
        def healthy(region: str) -> bool:
            with self.admin(region) as api:
                try:
                    return bool(api.call("GET", "/health")["status"] == "ok")
                except GeofleetError:  # 503: the region's own broker or store check failed
                    return False

        regions = [r.name for r in self.data.config().regions]
        wait_for(lambda: all(healthy(r) for r in regions), timeout, "every region healthy")


@contextlib.contextmanager
def restarted_region(fleet: Fleet, region: str) -> Iterator[None]:
    """Start a (killed) region again by hand, as an operator would; on leaving, stop it with
    SIGTERM and insist on a clean exit."""
    process = spawn_region(fleet.data, region)
    try:
        yield
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, f"the restarted {region} did not stop cleanly"


def start_fleet(root: Path) -> Fleet:
    fleet = Fleet.start(root, tuple(REGIONS))
    assert isinstance(fleet, Fleet)
    return fleet


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    running = start_fleet(tmp_path_factory.mktemp("fleet"))
    running.wait_healthy()  # tests read /health and expect every peer seen: wait for the first polls
    yield running
    running.stop()
