"""The port through which the control plane asks whether a region is up.

Provisioning (where to home a new device), presence (whose sessions still count) and the
concierge (which endpoints a device may use) depend on this interface only; the region node
implements it with its peer health polls (``region/health.py``), and an AWS backend could with
its own signal. The rule behind both answers is ``domain.region_health``.
"""

from __future__ import annotations

from typing import Protocol


class RegionHealth(Protocol):
    def usable(self, region: str) -> bool:
        """Whether ``region`` (this one or a peer) may take devices now."""
        ...

    def down(self) -> frozenset[str]:
        """The regions asked and found not usable (never one not yet asked)."""
        ...
