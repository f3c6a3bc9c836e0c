"""Per-key token buckets: how often one principal (a claim certificate) may ask for something.

A bucket holds up to ``burst`` tokens and gains ``per_minute / 60`` tokens a second; a request
takes one token or is refused with the time until the next one. Pure logic: the caller passes
the time, so the rule is tested without a clock and is the same in every region (each region
keeps its own buckets: a principal that spreads its requests over N regions gets N times the
rate, which is still a bound).
"""

from __future__ import annotations

from dataclasses import dataclass

from geofleet.domain.errors import GeofleetError

MAX_BUCKETS = 10_000
"""Buckets kept at most; the fullest (least recently limited) are dropped first."""


class Throttled(GeofleetError):
    """AWS's answer to a caller that exceeds its rate: ``Throttling`` / ``Rate exceeded``."""

    status = 429
    code = "Throttling"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        if per_minute < 1:
            raise ValueError("a rate limit needs at least 1 request per minute")
        self.per_minute = per_minute
        self.burst = burst if burst is not None else per_minute
        self._rate = per_minute / 60.0
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, now: float) -> None:
        """Spend one token of ``key``'s bucket, or raise Throttled saying when to retry."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + max(0.0, now - bucket.updated) * self._rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self._rate
            raise Throttled(f"Rate exceeded: at most {self.per_minute} requests a minute (bursts of {self.burst}) "
                            f"per claim certificate; retry in {wait:.1f} s", wait)
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        """A bucket that has refilled completely carries no state worth keeping."""
        for key in [k for k, b in self._buckets.items()
                    if b.tokens + (now - b.updated) * self._rate >= self.burst]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:  # all busy: drop the oldest rather than grow
            oldest = min(self._buckets, key=lambda k: self._buckets[k].updated)
            del self._buckets[oldest]
