"""The one definition of "is region R up", shared by the node and the application SDK.

A region is **usable** when its own deep health check (a broker loopback publish and a store
write, see ``region/health.py``) last said ``healthy`` and that answer is at most ``STALE_S``
old. A region is **down** when it has been asked and is not usable: its poll failed, it
answered unhealthy (HTTP 503), or its last healthy answer went stale. A region not yet asked
is neither: it is *unknown*, so the concierge does not offer it to devices, but provisioning
and presence do not write it off before its first poll.

Provisioning, presence, the concierge (on the node, through ``services.region_health``) and
``FleetApp`` (from what ``/health`` answers) all decide with these functions, so no two of
them can disagree about the same region at the same moment. Pure: the caller brings the
observations and the clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STALE_S = 3.0
"""A region not heard healthy for this long is no longer usable."""


@dataclass(frozen=True, slots=True)
class Observation:
    """What the latest health poll of one region saw."""

    polled: bool = False
    """Whether the region has been asked at least once."""
    healthy: bool = False
    """Whether its last answer said ``healthy``."""
    last_healthy: float | None = None
    """Monotonic time of its last healthy answer."""


def report_is_healthy(report: Mapping[str, Any] | None) -> bool:
    """Whether a ``/health`` body says the region serves devices (``degraded`` still does)."""
    return report is not None and report.get("healthy") is True


def usable(seen: Observation, now: float) -> bool:
    """Heard healthy, and recently enough to trust it."""
    return seen.healthy and seen.last_healthy is not None and now - seen.last_healthy < STALE_S


def down(seen: Observation, now: float) -> bool:
    """Asked, and not usable; a region never asked is not down (its state is unknown)."""
    return seen.polled and not usable(seen, now)


def rank(answers: Iterable[tuple[str, float, Mapping[str, Any] | None]]) -> list[str]:
    """The usable regions, nearest first, from ``(region, round trip s, /health body or None)``
    answered just now (so fresh by definition): what ``FleetApp`` calls first."""
    fresh = [(rtt, name) for name, rtt, report in answers if report_is_healthy(report)]
    return [name for _, name in sorted(fresh)]
