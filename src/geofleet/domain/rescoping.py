"""Changing where a device's data may rest: the rules of ``device move`` and of any write that
changes a thing's ``geofleet:regions`` (its residency scope, ``domain.residency``).

Only a region in *both* the old and the new scope may make such a write:

- a region outside the old scope holds only the thing's stub; an update written there would be
  built on the stub and replace the device's attributes everywhere with nothing;
- a region outside the new scope deletes the device's data as it applies its own write, so the
  data would survive only in the regions the two scopes share, and only if they heard of it.

A region in both holds the data, keeps it, and the other regions of the new scope get it from
there by anti-entropy. When the two scopes share no region, no single write can carry the data
over: the operator widens the scope to both first (in a region of the old scope), then narrows
it (in a region of the new one); ``check_rescope`` says so.

Moving a device (``plan_move``) never widens its scope silently: without new regions its
permitted set stays and only its home (the first of its failover order) changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geofleet.domain.endpoints import failover_order
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.geo import Place
from geofleet.domain.residency import Scope, WrongRegion

MAX_MOVE_REGIONS = 64
"""The most regions a move may name (a fleet has a handful)."""


def shared(before: Scope, after: Scope) -> Scope:
    """The regions both scopes include (everywhere only if both are)."""
    if before.regions is None:
        return after
    if after.regions is None:
        return before
    return Scope(before.regions & after.regions)


def _named(scope: Scope) -> str:
    return ", ".join(scope.listed()) or "every region"


def check_rescope(device: str, before: Scope, after: Scope, region: str) -> None:
    """Whether ``region`` may change ``device``'s scope from ``before`` to ``after``: InvalidRequest
    when no region may (the scopes share none), WrongRegion naming the regions that may when
    this one may not; nothing when this region is in both."""
    if before == after:
        if not before.includes(region):  # it holds the stub only: a write there would lose the rest
            raise WrongRegion.for_device(device, region, before)
        return
    both = shared(before, after)
    if both.regions is not None and not both.regions:
        old, new = _named(before), _named(after)
        union = ",".join(sorted((before.regions or frozenset()) | (after.regions or frozenset())))
        raise InvalidRequest(
            f"device {device!r} keeps its data in {old} and would keep it in {new}: no region is in both, so no "
            f"region could carry its data over. Do it in two steps: first widen its regions to {union} (ask a "
            f"region of {old}), then narrow them to {','.join(after.listed())} (ask a region of {new})")
    if not both.includes(region):
        where = _named(both)
        raise WrongRegion(
            f"device {device!r}'s residency scope changes from {_named(before)} to {_named(after)}: only a region in "
            f"both holds its data and may make the change, and {region} is not one: ask {where}", both.listed())


@dataclass(frozen=True, slots=True)
class Move:
    """What a move writes: the home, the new scope, and the failover order (home first)."""

    home: str
    scope: Scope
    order: tuple[str, ...]

    @property
    def regions_attribute(self) -> str | None:
        """The ``geofleet:regions`` value to write; None: leave it absent (scoped to every region)."""
        return None if self.scope.regions is None else ",".join(self.order)


def plan_move(device: str, body: dict[str, Any], home: str, regions: Sequence[str] | None,
              places: Sequence[Place], region: str) -> Move:
    """Move ``device`` (its thing ``body``) to ``home``, asked of ``region``. ``regions`` None
    keeps the permitted set (``home`` must be in it); otherwise it is the new set (``home``
    among them, every one a region of the fleet ``places``). Raises InvalidRequest for what no
    region may do, WrongRegion when another region must do it (``check_rescope``)."""
    fleet = [p.name for p in places]
    if home not in fleet:
        raise InvalidRequest(f"unknown region {home!r}; this fleet has: {', '.join(fleet)}")
    before = Scope.of_thing(body)
    if regions is None:
        after = before
        if not after.includes(home):
            raise InvalidRequest(
                f"device {device!r} may keep its data only in {_named(before)} (its residency scope), not in {home}: "
                f"to move it there, pass the regions it may use from now on, {home} among them "
                f"(--regions, or \"regions\" in the request)")
    else:
        if not regions:
            raise InvalidRequest("regions must name at least one region (leave it out to keep the device's own)")
        if len(regions) > MAX_MOVE_REGIONS:
            raise InvalidRequest(f"regions names {len(regions)} regions; at most {MAX_MOVE_REGIONS}")
        unknown = [r for r in dict.fromkeys(regions) if r not in fleet]
        if unknown:
            raise InvalidRequest(f"unknown region(s) {', '.join(map(repr, unknown))} in regions; this fleet has: "
                                 f"{', '.join(fleet)}")
        after = Scope.of(regions)
        if not after.includes(home):
            raise InvalidRequest(f"the new home {home} must be one of the regions given ({_named(after)})")
    check_rescope(device, before, after, region)
    order = failover_order(home, after.listed() or fleet, places)
    return Move(home, after, tuple(order))
