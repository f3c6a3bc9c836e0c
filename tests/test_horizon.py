"""The tombstone horizon: shadows and records collect only behind both an all-agree round and
the grace period, so a write still on its way from a partitioned region is never outlived."""

from __future__ import annotations

from geofleet.domain.hlc import HLC
from geofleet.domain.horizon import TombstoneHorizon


def test_nothing_is_collected_before_every_peer_has_agreed_once() -> None:
    horizon = TombstoneHorizon(grace_s=0.0, wall_s=lambda: 1_000.0)
    assert horizon.current() == HLC(0)
    assert horizon.by_age() == HLC(1_000_000)


def test_the_horizon_is_the_older_of_the_last_agreement_and_the_grace_period() -> None:
    now = [10_000.0]
    horizon = TombstoneHorizon(grace_s=100.0, wall_s=lambda: now[0])
    horizon.agreed(HLC(5_000_000))  # a round at t=5,000 s: a partition since then holds it back
    assert horizon.current() == HLC(5_000_000)
    horizon.agreed(HLC(9_990_000))  # agreement again, more recent than the grace period allows
    assert horizon.current() == HLC(9_900_000)
    horizon.agreed(HLC(1_000))  # an older round reported late never moves the horizon back
    assert horizon.current() == HLC(9_900_000)
