"""Where a device's data may rest, as the edge applies it: the WrongRegion (421) round trip from a
region's answer back to a typed error, and the rules of moving a device or changing its scope."""

from __future__ import annotations

import json

import httpx
import pytest

from geofleet.config import aws_region_coordinates
from geofleet.domain.errors import GeofleetError, InvalidRequest, answer
from geofleet.domain.geo import Place
from geofleet.domain.rescoping import check_rescope, plan_move, shared
from geofleet.domain.residency import Scope, WrongRegion
from geofleet.http_errors import error_response

US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-1"
EU2 = "eu-central-1"
PLACES = [Place(name, *aws_region_coordinates()[name]) for name in (US, EU, AP, EU2)]


def _through_http(error: GeofleetError) -> httpx.Response:
    """What a client receives for ``error``: the region's response, as bytes on the wire."""
    response = error_response(error)
    return httpx.Response(response.status_code, content=bytes(response.body),
                          headers={"content-type": "application/json"})


def test_wrong_region_travels_as_421_with_its_regions_and_comes_back_typed() -> None:
    sent = WrongRegion.for_device("de-1", US, Scope.of([EU, EU2]))
    response = _through_http(sent)
    assert response.status_code == 421
    assert response.json() == {"code": 421, "message": sent.message, "regions": [EU2, EU]}
    with pytest.raises(WrongRegion) as caught:
        answer(response)
    assert caught.value.regions == [EU2, EU]
    assert caught.value.message == sent.message
    assert caught.value.status == 421
    assert f"ask {EU2}, {EU}" in str(caught.value)


def test_other_errors_carry_no_regions_field() -> None:
    assert set(_through_http(InvalidRequest("no")).json()) == {"code", "message"}


@pytest.mark.parametrize(("body", "regions"), [
    ({"code": 421, "message": "m", "regions": [EU, 7, "", "x" * 65, EU]}, [EU]),  # only names, once each
    ({"code": 421, "message": "m", "regions": "eu-west-1"}, []),                    # not a list: none
    ({"code": 421, "message": "m"}, []),
    ({"code": 421, "message": "m", "regions": [f"r{i}" for i in range(500)]}, [f"r{i}" for i in range(64)]),
])
def test_a_malformed_421_answer_names_only_well_formed_regions(body: object, regions: list[str]) -> None:
    with pytest.raises(WrongRegion) as caught:
        answer(httpx.Response(421, content=json.dumps(body).encode()))
    assert caught.value.regions == regions


def test_a_421_that_is_not_geofleets_stays_a_plain_error() -> None:
    with pytest.raises(GeofleetError) as caught:
        answer(httpx.Response(421, content=b"<html>Misdirected Request</html>"))
    assert not isinstance(caught.value, WrongRegion)
    assert caught.value.status == 421


def _thing(regions: str | None, home: str = EU) -> dict[str, object]:
    attributes = {"geofleet:homeRegion": home, "name": "Jana"}
    if regions is not None:
        attributes["geofleet:regions"] = regions
    return {"thingName": "de-1", "version": 3, "attributes": attributes}


def test_a_move_keeps_the_permitted_regions_and_reorders_them_from_the_new_home() -> None:
    move = plan_move("de-1", _thing(f"{EU},{EU2}"), EU2, None, PLACES, EU)
    assert move.scope == Scope.of([EU, EU2]), "never widened silently"
    assert move.order == (EU2, EU)
    assert move.regions_attribute == f"{EU2},{EU}"


def test_a_device_without_a_scope_stays_everywhere() -> None:
    move = plan_move("any-1", _thing(None, US), AP, None, PLACES, US)
    assert move.scope == Scope.everywhere()
    assert move.regions_attribute is None, "the attribute stays absent: every region, future ones too"
    assert move.order[0] == AP
    assert sorted(move.order) == sorted(p.name for p in PLACES)


def test_moving_outside_the_permitted_regions_needs_new_regions() -> None:
    expected = rf"only in {EU} \(its residency scope\), not in {US}: .*pass the regions.*--regions"
    with pytest.raises(InvalidRequest, match=expected):
        plan_move("de-1", _thing(EU), US, None, PLACES, EU)


def test_new_regions_become_the_scope_narrowing_and_widening() -> None:
    narrowed = plan_move("de-1", _thing(f"{EU},{EU2}"), EU, [EU], PLACES, EU)
    assert (narrowed.scope, narrowed.order) == (Scope.of([EU]), (EU,))
    widened = plan_move("de-1", _thing(EU), EU, [EU, US], PLACES, EU)
    assert widened.scope == Scope.of([EU, US])
    assert widened.regions_attribute == f"{EU},{US}"


@pytest.mark.parametrize(("home", "regions", "message"), [
    ("eu-north-9", None, r"unknown region 'eu-north-9'; this fleet has: us-east-1, eu-west-1"),
    (EU, [EU, "mars-1"], r"unknown region\(s\) 'mars-1' in regions"),
    (EU, [], "at least one region"),
    (EU, [""], r"unknown region\(s\) ''"),
    (US, [EU, EU2], rf"new home {US} must be one of the regions given \({EU2}, {EU}\)"),
    (EU, [EU] * 65, "at most 64"),
])
def test_bad_moves_say_what_is_wrong(home: str, regions: list[str] | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        plan_move("de-1", _thing(EU), home, regions, PLACES, EU)


def test_only_a_region_in_both_scopes_may_write_the_change() -> None:
    with pytest.raises(WrongRegion) as caught:  # us-east-1 holds only the stub of a German device
        plan_move("de-1", _thing(f"{EU},{EU2}"), EU, [EU, US], PLACES, US)
    assert caught.value.regions == [EU], "old ∩ new"
    assert "only a region in both holds its data" in caught.value.message
    with pytest.raises(WrongRegion) as narrowing:  # eu-central-1 would delete what it just wrote
        plan_move("de-1", _thing(f"{EU},{EU2}"), EU, [EU], PLACES, EU2)
    assert narrowing.value.regions == [EU]
    with pytest.raises(WrongRegion) as same:  # keeping the scope: still only a region that holds the data
        plan_move("de-1", _thing(EU), EU, None, PLACES, US)
    assert same.value.regions == [EU]


def test_scopes_sharing_no_region_need_two_steps() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan_move("de-1", _thing(EU), US, [US], PLACES, EU)
    assert caught.value.message == (
        f"device 'de-1' keeps its data in {EU} and would keep it in {US}: no region is in both, so no region "
        f"could carry its data over. Do it in two steps: first widen its regions to {EU},{US} (ask a region of "
        f"{EU}), then narrow them to {US} (ask a region of {US})")


def test_a_scope_shared_with_everywhere_is_the_other_scope() -> None:
    assert shared(Scope.everywhere(), Scope.of([EU])) == Scope.of([EU])
    assert shared(Scope.of([EU, US]), Scope.everywhere()) == Scope.of([EU, US])
    assert shared(Scope.everywhere(), Scope.everywhere()) == Scope.everywhere()
    check_rescope("x", Scope.everywhere(), Scope.of([EU]), EU)  # creating a scoped thing in its scope
    with pytest.raises(WrongRegion):
        check_rescope("x", Scope.everywhere(), Scope.of([EU]), US)
