"""Data residency: where a device's data may rest, and what every region may still know.

A device's *scope* is the set of regions it was permitted at provisioning (residency rules and
its enrollment's regions), recorded on its thing as ``geofleet:regions``; a device without that
attribute is scoped to every region. Its *scoped* data rests only in its scope's regions:

- its shadows (classic and named);
- its presence entries (where it is connected);
- its thing's attributes, except the global ones below;
- what the rules and the journal keep about it (forwarded messages, dead letters, journal rows).

*Global* data reaches every region, because the fleet must stay safe and the device
identifiable without personal data: certificate status (a revocation is refused everywhere),
policies and their attachments, the thing-principal attachments, the provision-once guard, and a
thing *stub*: the thing record with only the stub fields and the global attributes
(``geofleet:homeRegion``, ``geofleet:regions``, ``geofleet:failoverMode`` and any a fleet adds
in ``fleet.json`` ``residency_global_attributes``). A region outside the scope therefore answers
"this device lives in eu-west-1" rather than "unknown", and never holds its attributes.

The thing record itself is one replicated record: a region in scope holds its full body, a region
outside holds the stub of the same version (same HLC and origin), so the two agree in anti-entropy
(a digest item is a record's identity and version, not its body) without the stub ever carrying
what it left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from geofleet.domain.endpoints import HOME_ATTRIBUTE, MODE_ATTRIBUTE, REGIONS_ATTRIBUTE
from geofleet.domain.errors import GeofleetError
from geofleet.domain.records import Kind

EVERYWHERE = "*"
"""The encoded scope of data that may rest in every region."""

GLOBAL_ATTRIBUTES = (HOME_ATTRIBUTE, REGIONS_ATTRIBUTE, MODE_ATTRIBUTE)
"""Thing attributes every region keeps: where the device lives, where it may go, how it fails over."""

STUB_FIELDS = ("thingName", "thingId", "thingTypeName", "version")
"""The thing record's fields every region keeps (besides the global attributes): its identity,
its type (a dependency every region resolves), and its version (so AWS's expectedVersion works
in scope, and a stub never looks newer than the full record)."""

SHADOW_KIND = "shadow"
"""The change-log kind of shadow writes (records have their ``Kind``)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """The regions a device's data may rest in; ``regions`` None means every region.

    Example::

        Scope.of_thing({"attributes": {"geofleet:regions": "eu-west-1,eu-central-1"}}).encode()
        # -> "eu-central-1,eu-west-1"
    """

    regions: frozenset[str] | None

    @classmethod
    def everywhere(cls) -> Scope:
        return cls(None)

    @classmethod
    def of(cls, regions: Iterable[str]) -> Scope:
        chosen = frozenset(r for r in regions if r)
        return cls(chosen) if chosen else cls(None)

    @classmethod
    def of_thing(cls, body: dict[str, Any] | None) -> Scope:
        """A thing body's scope: its ``geofleet:regions`` attribute (None or absent: everywhere)."""
        attributes = (body or {}).get("attributes") or {}
        return cls.of(str(attributes.get(REGIONS_ATTRIBUTE) or "").split(","))

    @classmethod
    def decode(cls, text: str) -> Scope:
        return cls(None) if text == EVERYWHERE else cls.of(text.split(","))

    def encode(self) -> str:
        """Canonical text (sorted), so equal scopes are equal strings: the digests' scope key."""
        return EVERYWHERE if self.regions is None else ",".join(sorted(self.regions))

    def includes(self, region: str) -> bool:
        return self.regions is None or region in self.regions

    def listed(self) -> list[str]:
        """The regions, sorted (empty for everywhere)."""
        return [] if self.regions is None else sorted(self.regions)

    def require(self, device: str, region: str) -> None:
        """WrongRegion (421, naming where to ask) unless ``region`` may hold the device's data."""
        if not self.includes(region):
            raise WrongRegion.for_device(device, region, self)


def subject(kind: str, key: str, ref: str) -> str | None:
    """The device whose scope decides where this item (a record or a shadow) may rest; None for
    global items. The thing record is global (every region holds at least its stub)."""
    if kind == SHADOW_KIND:
        return key.split("|", 1)[0]
    if kind == Kind.PRESENCE:
        return ref or key.split("|", 1)[0]
    return None


def stub(body: dict[str, Any] | None, extra_global: Iterable[str] = ()) -> dict[str, Any] | None:
    """What a region outside a device's scope keeps of its thing body (a tombstone stays one)."""
    if body is None:
        return None
    keep = {*GLOBAL_ATTRIBUTES, *extra_global}
    attributes = body.get("attributes") or {}
    projected = {field: body[field] for field in STUB_FIELDS if field in body}
    projected["attributes"] = {k: v for k, v in attributes.items() if k in keep}
    return projected


class WrongRegion(GeofleetError):
    """This region is outside the device's residency scope: ask one of ``regions`` instead
    (HTTP 421 Misdirected Request: the request is valid, but not here).

    Example::

        try:
            await app.get_shadow("de-sensor-1")   # FleetApp follows this itself
        except WrongRegion as exc:
            print(exc.regions)                     # ['eu-west-1']
    """

    status = 421
    code = "WrongRegion"

    def __init__(self, message: str, regions: list[str]) -> None:
        super().__init__(message)
        self.regions = regions

    @classmethod
    def for_device(cls, device: str, region: str, scope: Scope) -> WrongRegion:
        where = ", ".join(scope.listed())
        return cls(f"device {device!r} may keep its data only in {where} (its residency scope); {region} holds "
                   f"none of it: ask {where}", scope.listed())


def holds_more_than_stub(body: dict[str, Any] | None, extra_global: Iterable[str] = ()) -> bool:
    """Whether a thing body holds something a region outside its device's scope may not keep:
    a field beyond ``STUB_FIELDS`` or an attribute that is not global (the residency audit's
    rule for thing records and change-log entries)."""
    if body is None:
        return False
    keep = {*GLOBAL_ATTRIBUTES, *extra_global}
    attributes = body.get("attributes") or {}
    return any(f not in STUB_FIELDS and f != "attributes" for f in body) or any(a not in keep for a in attributes)
