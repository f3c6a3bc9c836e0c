"""``geofleet up``: every region of a fleet on this machine, each in its own OS process, kept
running by ``supervisor.Supervisor``; ``LocalFleet``, the throw-away fleet of tests, demos and
benchmarks, runs it with ``--no-restart``, since drills kill regions on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from geofleet.config import DEFAULT_REGIONS, DataDir, default_config
from geofleet.domain.errors import ConfigError
from geofleet.pki.files import private_dir
from geofleet.supervisor import Supervisor

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def spawn_region(data: DataDir, name: str, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a region node as a child that gets SIGTERM when its parent dies, however it dies
    (Linux), so that a killed ``geofleet up`` or test run never leaves regions holding ports."""
    log_file = log_file or data.region(name).log
    private_dir(log_file.parent)
    # 0600: a region's log names devices, certificates and errors that are the operator's business only.
    with os.fdopen(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        os.fchmod(log.fileno(), 0o600)
        return subprocess.Popen(
            [sys.executable, "-m", "geofleet", "region", "run", name, "--data-dir", str(data.root)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_ready(data: DataDir, name: str, process: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    region = data.config().region(name)
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=ssl.create_default_context(cafile=str(data.root_ca)), timeout=2.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ConfigError(f"region {name} exited with code {process.returncode}; see its node.log")
            try:
                if http.get(f"{region.http_url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise ConfigError(f"region {name} was not ready within {timeout:.0f} s; see its node.log")


def cluster_description(data: DataDir, processes: dict[str, subprocess.Popen[bytes]]) -> dict[str, object]:
    config = data.config()
    return {
        "fleet": config.fleet,
        "root_ca": str(data.root_ca),
        "trust_bundle": str(data.trust_bundle),
        "admin": {"token_file": str(data.admin_token),
                  "how": "send 'Authorization: Bearer <contents of token_file>' to every region's http_url"},
        "regions": {
            region.name: {
                "mqtt_host": region.address,
                "mqtt_port": region.mqtt_port,
                "http_url": region.http_url,
                "pid": processes[region.name].pid,
            }
            for region in config.regions
        },
    }


def run_fleet(data: DataDir, *, restart: bool = True) -> int:
    """Start every region, write cluster.json when all are ready, keep them running (see
    ``supervisor``), stop all on SIGINT/SIGTERM."""
    config = data.config()
    clashes = config.port_clashes()
    if clashes:
        raise ConfigError(f"these regions cannot all run on this machine ({'; '.join(clashes)}): give each region "
                          f"its own ports in {data.config_file}, or run each on its own host with "
                          "geofleet region run")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = Supervisor(data, lambda name: spawn_region(data, name), restart=restart,
                            say=lambda line: print(line, flush=True))
    try:
        for region in config.regions:
            supervisor.start(region.name)
        for name, child in supervisor.children.items():
            wait_ready(data, name, child.process)
        supervisor.write_cluster(cluster_description(data, {n: c.process for n, c in supervisor.children.items()}))
        print(f"fleet ready: {len(supervisor.children)} regions; see {data.cluster_file}", flush=True)
        while not stop.wait(0.5):
            supervisor.tend()
        return 0
    finally:
        _stop_all({n: c.process for n, c in supervisor.children.items()})
        data.cluster_file.unlink(missing_ok=True)


def _stop_all(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in processes.values():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


class LocalFleet:
    """A throw-away fleet on this machine for tests, demos and benchmarks: ``geofleet up`` in a
    subprocess on free loopback ports, ready when ``start`` returns."""

    def __init__(self, data: DataDir, process: subprocess.Popen[bytes], cluster: dict[str, object]) -> None:
        self.data, self.process, self.cluster = data, process, cluster
        self.restarted: dict[str, subprocess.Popen[bytes]] = {}
        """Regions started again after a kill: children of this process, not of ``geofleet up``."""

    @classmethod
    def start(cls, root: Path, regions: tuple[str, ...] = DEFAULT_REGIONS, timeout: float = READY_TIMEOUT_S,
              settings: dict[str, object] | None = None) -> LocalFleet:
        """``settings`` are further fleet.json fields (residency, trusted_proxies...)."""
        from geofleet.pki.fleet import initialize

        data = DataDir(root)
        initialize(data, default_config(free_ports=True, regions=regions, **(settings or {})))
        log = os.fdopen(os.open(root / "up.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
        process = subprocess.Popen([sys.executable, "-m", "geofleet", "up", "--data-dir", str(root), "--no-restart"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while not data.cluster_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                cls(data, process, {}).stop()
                raise ConfigError(f"the fleet in {root} did not start; see {root / 'up.log'}")
            time.sleep(0.05)
        return cls(data, process, json.loads(data.cluster_file.read_text()))

    def region(self, name: str) -> dict[str, object]:
        regions = self.cluster["regions"]
        assert isinstance(regions, dict)
        info = regions[name]
        assert isinstance(info, dict)
        return info

    def pid(self, name: str) -> int:
        return int(str(self.region(name)["pid"]))

    def send_signal(self, name: str, signum: int) -> None:
        """Send a region's process a signal: SIGKILL (a crash), SIGSTOP/SIGCONT (a black hole)."""
        os.kill(self.pid(name), signum)
        if signum == signal.SIGKILL:
            process = self.restarted.pop(name, None)
            if process is not None:
                process.wait()

    def restart(self, name: str, timeout: float | None = READY_TIMEOUT_S) -> None:
        """Start a killed region again, as an operator would, and wait until it is ready
        (``timeout`` None: do not wait; see ``wait_ready``).

        Call it from the thread that will outlive the region: Linux sends the parent-death
        signal when the *thread* that started a child exits (so not from ``asyncio.to_thread``)."""
        process = spawn_region(self.data, name)
        self.restarted[name] = process
        self.region(name)["pid"] = process.pid
        if timeout is not None:
            self.wait_ready(name, timeout)

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT_S) -> None:
        wait_ready(self.data, name, self.restarted[name], timeout)

    def stop(self) -> int:
        """SIGTERM ``geofleet up`` (which stops every region) and return its exit code."""
        _stop_all(self.restarted)
        self.restarted.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
