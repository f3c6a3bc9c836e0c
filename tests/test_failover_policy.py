"""The device's failover policy without sockets: the reconnect backoff's bounds and jitter,
which endpoint a device tries next, what it does after a lost session, a failed attempt or a
deliberate leave, and when it looks at home again."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofleet.domain.failover import (
    FailoverOptions,
    after_leave,
    after_lost,
    after_unreachable,
    choose,
    should_leave,
)

OPTIONS = [FailoverOptions(), FailoverOptions(backoff_base_s=2.0, backoff_max_s=5.0),
           FailoverOptions(backoff_base_s=0.1, backoff_max_s=60.0)]
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]


@given(st.sampled_from(OPTIONS), st.integers(1, 50))
def test_backoff_stays_between_a_quarter_base_and_the_capped_exponential(options: FailoverOptions,
                                                                         failures: int) -> None:
    ceiling = min(options.backoff_max_s, options.backoff_base_s * 2 ** (failures - 1))
    delay = options.backoff(failures)
    assert options.backoff_base_s / 4 <= delay <= ceiling
    assert delay <= options.backoff_max_s


@pytest.mark.parametrize("failures", [1, 5, 50])
def test_backoff_is_jittered(failures: int) -> None:
    options = FailoverOptions()
    assert len({options.backoff(failures) for _ in range(50)}) > 1


def test_backoff_is_reproducible_with_a_seeded_random() -> None:
    options = FailoverOptions()
    assert options.backoff(3, random.Random(7)) == options.backoff(3, random.Random(7))


def test_choose_skips_regions_reported_unusable() -> None:
    assert REGIONS[choose(REGIONS, 0, {"us-east-1": False})] == "eu-west-1"
    assert REGIONS[choose(REGIONS, 1, {"eu-west-1": False, "ap-southeast-1": False})] == "us-east-1"
    assert REGIONS[choose(REGIONS, 4, {})] == "eu-west-1"  # cyclic


def test_choose_tries_in_order_when_every_region_is_reported_unusable() -> None:
    all_down = dict.fromkeys(REGIONS, False)
    assert [REGIONS[choose(REGIONS, i, all_down)] for i in range(3)] == REGIONS


def test_a_lost_session_moves_on_after_a_spread_delay_with_fresh_health() -> None:
    options = FailoverOptions(first_retry_spread_s=0.3)
    retry = after_lost(options, 1, "eu-west-1", random.Random(1))
    assert (retry.index, retry.failures, retry.reason, retry.refresh_health) == (2, 0, "lost eu-west-1", True)
    assert 0 <= retry.delay_s <= 0.3


def test_failed_attempts_jitter_within_a_round_and_back_off_after_a_whole_round() -> None:
    options = FailoverOptions(backoff_base_s=0.4, backoff_max_s=10.0)
    rng = random.Random(3)
    first = after_unreachable(options, 3, 0, 0, "us-east-1", rng)
    assert (first.index, first.failures, first.reason, first.refresh_health) == (1, 1, "us-east-1 unreachable", False)
    assert 0 <= first.delay_s <= 0.1
    second = after_unreachable(options, 3, 1, first.failures, "eu-west-1", rng)
    assert (second.failures, second.refresh_health) == (2, False)
    round_over = after_unreachable(options, 3, 2, second.failures, "ap-southeast-1", rng)
    assert (round_over.index, round_over.failures, round_over.refresh_health) == (3, 3, True)
    assert 0.1 <= round_over.delay_s <= 0.4, "the first round's backoff: at most the base"
    third_round = after_unreachable(options, 3, 8, 8, "ap-southeast-1", rng)
    assert third_round.refresh_health, "base * 2 ** (3 - 1)"
    assert 0.1 <= third_round.delay_s <= 1.6, "base * 2 ** (3 - 1)"


def test_a_deliberate_leave_goes_home_or_on_at_once() -> None:
    home = after_leave(1, "fail-back to us-east-1", go_home=True)
    assert (home.index, home.failures, home.delay_s, home.refresh_health) == (0, 0, 0.0, False)
    assert home.reason == "fail-back to us-east-1"
    assert after_leave(1, "eu-west-1 reported unusable", go_home=False).index == 2


def test_a_region_reported_unusable_is_left_only_for_a_usable_one() -> None:
    assert should_leave("eu-west-1", REGIONS, {"eu-west-1": False, "us-east-1": True})
    assert not should_leave("eu-west-1", REGIONS, {"eu-west-1": False, "us-east-1": False})
    assert not should_leave("eu-west-1", REGIONS, {}), "no word from the fleet: stay"
    assert not should_leave("eu-west-1", REGIONS, {"eu-west-1": True, "us-east-1": True})


@given(st.floats(0.1, 100.0), st.integers(0, 2**32))
def test_home_checks_are_jittered_around_the_interval(interval: float, seed: int) -> None:
    options = FailoverOptions(failback_interval_s=interval, health_interval_s=interval)
    rng = random.Random(seed)
    assert 0.5 * interval <= options.home_check_delay(rng) <= 1.5 * interval
    assert 0.5 * interval <= options.health_check_delay(rng) <= 1.5 * interval
