"""The device's failover policy: which endpoint to try next, how long to wait first, and when to
look at home again. Pure (no sockets, no clock, randomness injected), so every decision the
device's connection loop makes can be unit-tested without a broker.

The loop keeps exactly one MQTT session and asks this module after each one ends:

- a session that was up and was lost: try the next endpoint after a random delay in
  ``[0, first_retry_spread_s]`` (a region's devices must not all arrive at one instant), and
  ask the fleet again which regions are usable;
- a connection attempt that failed: try the next endpoint at once (a short jitter); after a whole
  round of failures, back off exponentially with full jitter and ask the fleet again;
- a session left on purpose (fail-back home, or the region reported unusable): go home, or on
  to the next endpoint, at once.

Endpoints are chosen by region name, skipping those the fleet reports unusable.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    """How a device fails over and comes home; the defaults suit a real fleet.

    Example::

        options = FailoverOptions(keepalive_s=10, min_stay_s=30)
        async with DeviceClient(..., options=options) as device: ...
    """

    keepalive_s: int = 30
    """Silence after which the device gives a region up. The MQTT keep-alive is set to half of
    it: paho pings after one keep-alive without traffic from the broker and drops the session
    after one more, so a black-holed region is left within ``keepalive_s`` (plus a second)."""
    connect_timeout_s: float = 5.0
    first_retry_spread_s: float = 1.0
    """After losing a session, the first reconnect waits uniform(0, this): spreads a region's
    devices over a second instead of all at one instant."""
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    failback: bool = True
    min_stay_s: float = 60.0
    """Stay at least this long in a failover region before trying home again (avoids flapping)."""
    failback_interval_s: float = 10.0
    health_interval_s: float = 0.0
    """How often to ask the concierge whether the current region is still usable (0: never;
    a lost session is always noticed through MQTT)."""
    dedup_window_s: float = 60.0

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff (the AWS architecture blog's recommendation), never
        below a quarter of the base so a whole fleet does not spin on a dead region."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, failures - 1))
        return (rng or _RANDOM).uniform(min(self.backoff_base_s / 4, ceiling), ceiling)

    def home_check_delay(self, rng: random.Random | None = None) -> float:
        """The wait between two looks at home while away: the interval, jittered by +-50% so the
        devices that failed over together do not all knock at once."""
        return (rng or _RANDOM).uniform(0.5, 1.5) * self.failback_interval_s

    def health_check_delay(self, rng: random.Random | None = None) -> float:
        """The wait between two questions to the concierge about the current region (jittered)."""
        return (rng or _RANDOM).uniform(0.5, 1.5) * self.health_interval_s


_RANDOM = random.Random()


@dataclass(frozen=True, slots=True)
class Retry:
    """What the connection loop does after a session ended: wait ``delay_s``, ask the fleet for
    fresh health if ``refresh_health``, then try the endpoint at ``index`` (see ``choose``)."""

    index: int
    failures: int
    """Consecutive failed attempts (0 after a session that was up)."""
    reason: str
    delay_s: float
    refresh_health: bool


def choose(regions: Sequence[str], index: int, usable: Mapping[str, bool]) -> int:
    """The position of the endpoint to try: the one at ``index`` (cyclic), skipping regions the
    fleet reports unusable (a region not in ``usable`` counts as usable). When every one is
    reported unusable, the one at ``index`` anyway: the report may be stale, and trying (with
    backoff) beats giving up.

    >>> choose(["a", "b", "c"], 0, {"a": False})
    1
    """
    count = len(regions)
    for step in range(count):
        candidate = (index + step) % count
        if usable.get(regions[candidate], True):
            return candidate
    return index % count


def after_leave(current: int, reason: str, go_home: bool) -> Retry:
    """A session left on purpose: home, or on to the next endpoint, at once."""
    return Retry(0 if go_home else current + 1, 0, reason, 0.0, False)


def after_lost(options: FailoverOptions, current: int, region: str, rng: random.Random | None = None) -> Retry:
    """A session that was up is gone: the next endpoint after a spread delay, with fresh health."""
    return Retry(current + 1, 0, f"lost {region}", (rng or _RANDOM).uniform(0, options.first_retry_spread_s), True)


def after_unreachable(options: FailoverOptions, count: int, current: int, failures: int, region: str,
                      rng: random.Random | None = None) -> Retry:
    """A connection attempt to the endpoint at ``current`` failed (``failures`` before it). The
    next one is tried after a short jitter; once a whole round of ``count`` endpoints failed, after
    a backoff, with fresh health."""
    failures += 1
    reason = f"{region} unreachable"
    if failures % count == 0:
        return Retry(current + 1, failures, reason, options.backoff(failures // count, rng), True)
    return Retry(current + 1, failures, reason, (rng or _RANDOM).uniform(0, options.backoff_base_s / 4), False)


def should_leave(region: str, regions: Sequence[str], usable: Mapping[str, bool]) -> bool:
    """Whether to leave ``region`` on the fleet's word: it is reported unusable and some endpoint
    is reported usable (leaving for nowhere better would only cost a session)."""
    return not usable.get(region, True) and any(usable.get(r) for r in regions)
