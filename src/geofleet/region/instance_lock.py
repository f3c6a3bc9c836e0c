"""One process per region: an exclusive ``flock`` on a file in the region's directory, taken
before the node touches anything and held for the life of the process.

A second ``geofleet region run`` for a region that runs already would otherwise clear the
running region's presence entries and replace its probe certificate before failing on the port.
The kernel drops the lock when the process exits, however it exits (SIGKILL included), so a
crashed region never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from geofleet.domain.errors import ConfigError
from geofleet.pki.files import private_dir


class AlreadyRunning(ConfigError):
    """Another process holds the region's lock."""

    code = "RegionAlreadyRunning"


class InstanceLock:
    def __init__(self, fd: int, path: Path) -> None:
        self._fd, self.path = fd, path

    @classmethod
    def acquire(cls, path: Path, region: str) -> InstanceLock:
        """Lock ``path`` (created 0600) and write this pid into it; AlreadyRunning if held."""
        private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"region {region} is already running (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1
