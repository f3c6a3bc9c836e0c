"""``geofleet up`` keeps its regions running: a region that exits is started again, after a
backoff when it keeps failing, and ``cluster.json`` always names the live processes.

An operator restarts one region of a running fleet with ``geofleet region restart R`` (the
supervisor starts it again at once); ``geofleet region run R`` by hand is refused for a region
the supervisor owns, since two copies would fight over its ports and store. ``geofleet up
--no-restart`` leaves killed regions down (drills and tests kill regions on purpose); then a
region started by hand records its own pid in ``cluster.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from geofleet.config import DataDir
from geofleet.domain.errors import ConfigError
from geofleet.pki.files import write_public

RESTART_BACKOFF_S = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Delay before the n-th restart in a row: the first is immediate (an operator's restart, a
one-off crash); a region that keeps crashing is retried less and less often."""
STABLE_S = 60.0
"""A region that ran this long before exiting starts the backoff from the beginning again."""


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    started: float
    failures: int = 0
    restart_at: float | None = None
    reported: bool = False


class Supervisor:
    """The regions of ``geofleet up``, each a child process; ``tend`` is called periodically."""

    def __init__(self, data: DataDir, spawn: Callable[[str], subprocess.Popen[bytes]], *, restart: bool,
                 say: Callable[[str], None] = print) -> None:
        self._data, self._spawn, self._restart, self._say = data, spawn, restart, say
        self.children: dict[str, _Child] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        process = self._spawn(name)
        self.children[name] = _Child(process, time.monotonic())
        return process

    def write_cluster(self, description: dict[str, Any]) -> None:
        """``cluster.json``: the description with this supervisor's pid and whether it restarts."""
        description["supervisor"] = {"pid": os.getpid(), "restarts": self._restart}
        with _cluster_lock(self._data):
            write_public(self._data.cluster_file, json.dumps(description, indent=2).encode())

    def tend(self) -> None:
        """Notice exited regions; restart those whose backoff has passed (if restarting)."""
        now = time.monotonic()
        for name, child in self.children.items():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.process, child.started, child.restart_at = self._spawn(name), now, None
                    self._record_pid(name, child.process.pid)
                    self._say(f"region {name} restarted (pid {child.process.pid})")
                continue
            code = child.process.poll()
            if code is None or child.reported:
                continue
            if not self._restart:
                child.reported = True
                self._say(f"region {name} exited with code {code}; not restarting (--no-restart)")
                continue
            if now - child.started >= STABLE_S:
                child.failures = 0
            delay = RESTART_BACKOFF_S[min(child.failures, len(RESTART_BACKOFF_S) - 1)]
            child.failures += 1
            child.restart_at = now + delay
            self._say(f"region {name} exited with code {code}; restarting in {delay:g} s")

    def _record_pid(self, name: str, pid: int) -> None:
        record_pid(self._data, name, pid)


@contextlib.contextmanager
def _cluster_lock(data: DataDir) -> Iterator[None]:
    """Serializes read-modify-write of ``cluster.json`` (the supervisor, regions run by hand)."""
    fd = os.open(data.cluster_file.with_name("cluster.json.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_pid(data: DataDir, name: str, pid: int) -> None:
    """Make ``cluster.json`` name ``pid`` as region ``name``'s process (if the file exists)."""
    if not data.cluster_file.exists():
        return
    with _cluster_lock(data):
        try:
            cluster = json.loads(data.cluster_file.read_text())
        except FileNotFoundError:
            return
        if name in cluster.get("regions", {}):
            cluster["regions"][name]["pid"] = pid
            write_public(data.cluster_file, json.dumps(cluster, indent=2).encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cluster(data: DataDir) -> dict[str, Any] | None:
    try:
        cluster: dict[str, Any] = json.loads(data.cluster_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return cluster


def restarting_supervisor(data: DataDir) -> int | None:
    """The pid of a live ``geofleet up`` that restarts its regions, or None."""
    cluster = _cluster(data)
    supervisor = (cluster or {}).get("supervisor") or {}
    pid = supervisor.get("pid")
    if isinstance(pid, int) and supervisor.get("restarts") and _alive(pid):
        return pid
    return None


def before_region_run(data: DataDir, name: str) -> None:
    """What ``geofleet region run`` checks and records before it starts: refuse a region that a
    restarting supervisor owns (unless this process is that supervisor's child); otherwise make
    ``cluster.json`` (of a fleet started with ``--no-restart``) name this process."""
    supervisor = restarting_supervisor(data)
    if supervisor is not None and os.getppid() != supervisor:
        raise ConfigError(f"region {name} is run by geofleet up (pid {supervisor}), which restarts it when it "
                          f"exits: use 'geofleet region restart {name}' instead of starting a second copy")
    if supervisor is None:
        record_pid(data, name, os.getpid())


def restart_region(data: DataDir, name: str, ready: Callable[[], bool], timeout: float) -> int:
    """Stop region ``name`` of a running ``geofleet up`` and wait until the supervisor has started
    it again and ``ready`` says it serves; returns the new pid."""
    data.config().region(name)  # ConfigError for an unknown region
    if restarting_supervisor(data) is None:
        raise ConfigError("no running 'geofleet up' restarts this fleet's regions (start it with geofleet up, "
                          "without --no-restart)")
    old = int((_cluster(data) or {})["regions"][name]["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = int(((_cluster(data) or {}).get("regions", {}).get(name) or {}).get("pid", old))
        if pid != old and ready():
            return pid
        time.sleep(0.1)
    raise ConfigError(f"region {name} did not come back within {timeout:g} s; see its node.log")
