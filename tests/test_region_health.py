"""The one rule for "is region R up" (``domain.region_health``), without sockets."""

from __future__ import annotations

from geofleet.domain.region_health import STALE_S, Observation, down, rank, usable


def test_a_region_heard_healthy_recently_is_usable_and_not_down() -> None:
    seen = Observation(polled=True, healthy=True, last_healthy=100.0)
    assert usable(seen, 100.0 + STALE_S - 0.1)
    assert not down(seen, 100.0 + STALE_S - 0.1)


def test_a_stale_healthy_answer_makes_the_region_down() -> None:
    seen = Observation(polled=True, healthy=True, last_healthy=100.0)
    assert not usable(seen, 100.0 + STALE_S)
    assert down(seen, 100.0 + STALE_S)


def test_a_failed_poll_makes_the_region_down() -> None:
    seen = Observation(polled=True, healthy=False, last_healthy=100.0)
    assert not usable(seen, 100.5)
    assert down(seen, 100.5)


def test_a_region_never_asked_is_unknown_neither_usable_nor_down() -> None:
    assert not usable(Observation(), 0.0)
    assert not down(Observation(), 0.0)


def test_rank_keeps_healthy_and_degraded_regions_nearest_first() -> None:
    answers = [("far", 0.30, {"healthy": True, "status": "ok"}),
               ("near", 0.01, {"healthy": True, "status": "degraded"}),
               ("sick", 0.001, {"healthy": False, "status": "unhealthy"}),
               ("gone", 0.0, None)]
    assert rank(answers) == ["near", "far"]
