"""The concierge's endpoint list: failover order (home, then nearest to the home, within the
permitted regions) and the usable flags in active-active and active-standby modes."""

from __future__ import annotations

import pytest

from geofleet.domain.endpoints import Endpoint, FailoverMode, ListedEndpoint, endpoints, failover_order
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.geo import Place

PLACES = [
    Place("us-east-1", 38.9, -77.0),
    Place("eu-west-1", 53.3, -6.3),
    Place("eu-central-1", 50.1, 8.7),
    Place("ap-southeast-1", 1.35, 103.8),
]
ALL = [p.name for p in PLACES]
ADDRESSES = {name: Endpoint(name, f"{name}.example", 8883 + i) for i, name in enumerate(ALL)}


def health(*down: str) -> dict[str, bool]:
    return {name: name not in down for name in ALL}


# --- failover_order -----------------------------------------------------------------------------


def test_home_first_then_the_others_by_distance_from_the_home() -> None:
    assert failover_order("us-east-1", ALL, PLACES) == ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"]
    assert failover_order("eu-west-1", ALL, PLACES) == ["eu-west-1", "eu-central-1", "us-east-1", "ap-southeast-1"]
    assert failover_order("ap-southeast-1", ALL, PLACES)[0] == "ap-southeast-1"


def test_order_does_not_depend_on_the_order_of_the_permitted_list() -> None:
    assert failover_order("eu-west-1", list(reversed(ALL)), PLACES) == failover_order("eu-west-1", ALL, PLACES)


def test_permitted_list_restricts_the_failover_regions() -> None:
    assert failover_order("eu-west-1", ["eu-west-1", "eu-central-1"], PLACES) == ["eu-west-1", "eu-central-1"]
    assert failover_order("eu-west-1", [], PLACES) == ["eu-west-1"]


def test_duplicate_and_unknown_permitted_regions_are_dropped() -> None:
    order = failover_order("us-east-1", ["eu-west-1", "mars-1", "eu-west-1", "us-east-1"], PLACES)
    assert order == ["us-east-1", "eu-west-1"]


def test_unknown_home_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest, match="home region 'mars-1' is not a region of this fleet"):
        failover_order("mars-1", ALL, PLACES)


# --- active-active ------------------------------------------------------------------------------


def test_active_active_lists_every_region_usable_when_healthy() -> None:
    order = failover_order("us-east-1", ALL, PLACES)
    listed = endpoints(order, ADDRESSES, health("eu-west-1"), FailoverMode.ACTIVE_ACTIVE)
    assert [e.region for e in listed] == order
    assert [e.role for e in listed] == ["home", "failover", "failover", "failover"]
    assert all(e.usable == e.healthy for e in listed)
    assert [e.usable for e in listed] == [True, False, True, True]
    assert listed[0] == ListedEndpoint(Endpoint("us-east-1", "us-east-1.example", 8883), "home", True, True)


def test_active_active_region_of_unknown_health_is_not_usable() -> None:
    listed = endpoints(["us-east-1", "eu-west-1"], ADDRESSES, {"us-east-1": True}, FailoverMode.ACTIVE_ACTIVE)
    assert [(e.healthy, e.usable) for e in listed] == [(True, True), (False, False)]


# --- active-standby -----------------------------------------------------------------------------


def test_active_standby_lists_only_home_and_nearest_standby() -> None:
    listed = endpoints(failover_order("eu-west-1", ALL, PLACES), ADDRESSES, health(), FailoverMode.ACTIVE_STANDBY)
    assert [(e.region, e.role) for e in listed] == [("eu-west-1", "home"), ("eu-central-1", "standby")]


def test_active_standby_standby_is_not_usable_while_the_home_is_healthy() -> None:
    listed = endpoints(failover_order("eu-west-1", ALL, PLACES), ADDRESSES, health(), FailoverMode.ACTIVE_STANDBY)
    assert [(e.healthy, e.usable) for e in listed] == [(True, True), (True, False)]


def test_active_standby_standby_is_usable_when_the_home_is_unhealthy() -> None:
    listed = endpoints(failover_order("eu-west-1", ALL, PLACES), ADDRESSES, health("eu-west-1"),
                       FailoverMode.ACTIVE_STANDBY)
    assert [(e.healthy, e.usable) for e in listed] == [(False, False), (True, True)]


def test_active_standby_nothing_usable_when_both_are_down() -> None:
    listed = endpoints(failover_order("eu-west-1", ALL, PLACES), ADDRESSES, health("eu-west-1", "eu-central-1"),
                       FailoverMode.ACTIVE_STANDBY)
    assert not any(e.usable for e in listed)


def test_active_standby_explicit_standby_overrides_the_nearest() -> None:
    order = failover_order("eu-west-1", ALL, PLACES)
    listed = endpoints(order, ADDRESSES, health("eu-west-1"), FailoverMode.ACTIVE_STANDBY, standby="us-east-1")
    assert [(e.region, e.role, e.usable) for e in listed] == [("eu-west-1", "home", False),
                                                              ("us-east-1", "standby", True)]


def test_active_standby_override_outside_the_permitted_order_falls_back_to_the_nearest() -> None:
    order = failover_order("eu-west-1", ["eu-west-1", "eu-central-1"], PLACES)
    listed = endpoints(order, ADDRESSES, health(), FailoverMode.ACTIVE_STANDBY, standby="ap-southeast-1")
    assert [e.region for e in listed] == ["eu-west-1", "eu-central-1"]


def test_active_standby_with_no_other_region_lists_only_the_home() -> None:
    listed = endpoints(["eu-west-1"], ADDRESSES, health(), FailoverMode.ACTIVE_STANDBY)
    assert [e.region for e in listed] == ["eu-west-1"]


# --- FailoverMode -------------------------------------------------------------------------------


def test_failover_mode_parses_both_modes() -> None:
    assert FailoverMode.parse("active-active", "x") is FailoverMode.ACTIVE_ACTIVE
    assert FailoverMode.parse("active-standby", "x") is FailoverMode.ACTIVE_STANDBY


def test_bad_failover_mode_names_where_and_the_allowed_values() -> None:
    with pytest.raises(InvalidRequest) as caught:
        FailoverMode.parse("hot-cold", "thing sensor-1")
    assert str(caught.value) == ("thing sensor-1: failover mode must be 'active-active' or 'active-standby', "
                                 "not 'hot-cold'")
