"""Files that hold keys and other secrets: written with private modes from the first byte.

Here rather than in the fleet's configuration module because the device SDK writes its key and
certificate with the same care, and the SDK may not depend on the node's side.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 and tighten it if it exists: a data directory
    holds keys, tokens and the store, and no other local user has any business listing it."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 (never readable by others, even for an instant)."""
    private_dir(path.parent)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")  # concurrent writers never share it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    """Certificates and configuration: not secret, but the data directory is the operator's alone,
    so they get 0600 too (clients that need the CA get a copy, e.g. ``device create --out``)."""
    write_private(path, data)
