"""Region choice (distance, residency rules, health, weights) and rendezvous ownership, on the
AWS regions' coordinates shipped with geofleet."""

from __future__ import annotations

import pytest

from geofleet.config import aws_region_coordinates
from geofleet.domain.geo import Location, NoRegionAllowed, Place, choose_home, distance_km
from geofleet.domain.placement import owner

AWS = [Place(name, lat, lon) for name, (lat, lon) in aws_region_coordinates().items()]
EU_ONLY = {"EU": ["eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "eu-central-2", "eu-north-1",
                  "eu-south-1", "eu-south-2"]}


def test_distance_of_known_city_pairs() -> None:
    assert distance_km(48.86, 2.35, 51.51, -0.13) == pytest.approx(344, abs=5)  # Paris - London
    assert distance_km(40.71, -74.01, 51.51, -0.13) == pytest.approx(5570, abs=30)  # New York - London
    assert distance_km(1.0, 2.0, 1.0, 2.0) == 0


@pytest.mark.parametrize(("city", "lat", "lon", "expected"), [
    ("Paris", 48.86, 2.35, "eu-west-3"),
    ("Berlin", 52.52, 13.40, "eu-central-1"),
    ("Seattle", 47.61, -122.33, "us-west-2"),
    ("Buenos Aires", -34.60, -58.38, "sa-east-1"),
    ("Cairo", 30.04, 31.24, "il-central-1"),
    ("Johannesburg", -26.20, 28.05, "af-south-1"),
    ("Sydney", -33.87, 151.21, "ap-southeast-2"),
    ("Tokyo", 35.68, 139.69, "ap-northeast-1"),
    ("Mumbai", 19.08, 72.88, "ap-south-1"),
])
def test_nearest_region(city: str, lat: float, lon: float, expected: str) -> None:
    choice = choose_home(Location(lat, lon), AWS, default="us-east-1")
    assert choice.home == expected, city
    assert choice.order[0] == expected
    assert len(choice.order) == len(AWS)
    distances = [distance_km(lat, lon, p.latitude, p.longitude) for n in choice.order for p in AWS if p.name == n]
    assert distances == sorted(distances), "the others follow by distance"


def test_residency_rule_keeps_an_eu_device_in_the_eu() -> None:
    fleet = [p for p in AWS if p.name in ("us-east-1", "eu-west-1", "ap-southeast-1")]
    berlin = Location(52.52, 13.40, country="DE", continent="EU")
    choice = choose_home(berlin, fleet, default="us-east-1", residency=EU_ONLY)
    assert choice.order == ("eu-west-1",)
    assert any("residency rule EU" in r for r in choice.reasons)
    # An Icelandic device (nearest region: Dublin or London) with a rule for its country only.
    reykjavik = Location(64.15, -21.94, country="IS", continent="EU")
    assert choose_home(reykjavik, AWS, default="us-east-1", residency={"IS": ["eu-north-1"], **EU_ONLY}).home \
        == "eu-north-1", "a country rule beats its continent's"


def test_enrollment_narrows_and_unhealthy_home_is_skipped() -> None:
    paris = Location(48.86, 2.35, country="FR", continent="EU")
    assert choose_home(paris, AWS, default="us-east-1", allowed=["eu-west-1", "us-east-1"]).home == "eu-west-1"
    choice = choose_home(paris, AWS, default="us-east-1", unhealthy=["eu-west-3"])
    assert choice.home == "eu-west-2"
    assert "eu-west-3" not in choice.order
    assert any("unhealthy" in r for r in choice.reasons)


def test_weights_and_unknown_location() -> None:
    brussels = Location(50.85, 4.35)
    assert choose_home(brussels, AWS, default="us-east-1").home == "eu-west-3"
    assert choose_home(brussels, AWS, default="us-east-1", weights={"eu-central-1": 10}).home == "eu-central-1"
    unknown = choose_home(Location(country="ZZ"), AWS, default="ap-southeast-1")
    assert unknown.home == "ap-southeast-1", "then nearest to it"
    assert unknown.order[1] == "ap-southeast-5", "then nearest to it"
    assert any("location unknown" in r for r in unknown.reasons)


def test_no_region_left_is_an_error_that_says_why() -> None:
    with pytest.raises(NoRegionAllowed, match="residency"):
        choose_home(Location(country="DE", continent="EU"), AWS[:3], default="us-east-1", residency={"DE": ["eu-x"]})
    with pytest.raises(NoRegionAllowed, match="unhealthy"):
        choose_home(Location(1, 2), AWS[:2], default="us-east-1", unhealthy=[p.name for p in AWS[:2]])


def test_rendezvous_owner_is_stable_balanced_and_moves_little() -> None:
    regions = ["us-east-1", "eu-west-1", "ap-southeast-1"]
    keys = [f"device-{i}" for i in range(3000)]
    owners = {k: owner(k, regions) for k in keys}
    assert owners == {k: owner(k, list(reversed(regions))) for k in keys}, "order of the list does not matter"
    counts = {r: sum(1 for o in owners.values() if o == r) for r in regions}
    assert all(800 < c < 1200 for c in counts.values()), counts
    bigger = {k: owner(k, [*regions, "sa-east-1"]) for k in keys}
    moved = [k for k in keys if bigger[k] != owners[k]]
    assert all(bigger[k] == "sa-east-1" for k in moved), "only keys the new region wins move"
    with pytest.raises(ValueError, match="no regions"):
        owner("x", [])
