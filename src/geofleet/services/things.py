"""Things: CreateThing (idempotent for identical input), DescribeThing, ListThings,
UpdateThing and DeleteThing with AWS's optimistic locking."""

from __future__ import annotations

import uuid
from dataclasses import replace
from functools import partial
from typing import Any

from geofleet.domain.errors import Conflict
from geofleet.domain.names import ThingName
from geofleet.domain.records import Kind
from geofleet.domain.registry_rules import (
    arn,
    check_attributes,
    check_expected_version,
    check_thing_deletable,
    merge_attributes,
)
from geofleet.services.ledger import Ledger
from geofleet.services.thing_types import ThingTypes


class Things:
    def __init__(self, ledger: Ledger, account: str, types: ThingTypes) -> None:
        self._ledger = ledger
        self._types = types
        self._arn = partial(arn, ledger.region, account, "thing")

    def create(self, name: ThingName, type_name: str | None = None,
               attributes: dict[str, str] | None = None) -> dict[str, Any]:
        attributes = check_attributes(attributes or {})
        existing = self._ledger.live(Kind.THING, name)
        if existing is not None:
            body = existing.body or {}
            kept = self._ledger.kept(replace(existing, body={**body, "attributes": attributes})).body or {}
            if body.get("thingTypeName") == type_name and body.get("attributes") == kept.get("attributes"):
                # CreateThing is idempotent for identical input (here, outside the device's
                # residency scope, identical as far as this region's stub goes)
                return self._summary(body)
            raise Conflict(f"thing {name!r} already exists with different type or attributes")
        if type_name is not None:
            self._types.check_usable(type_name)
        body = {"thingName": name, "thingId": str(uuid.uuid4()), "thingTypeName": type_name,
                "attributes": attributes, "version": 1}
        self._ledger.put(Kind.THING, name, body)
        return self._summary(body)

    def exists(self, name: str) -> bool:
        return self._ledger.live(Kind.THING, name) is not None

    def describe(self, name: str) -> dict[str, Any]:
        body = self._ledger.require(Kind.THING, name, "thing").body or {}
        return {**body, "thingArn": self._arn(name)}

    def all(self, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every thing; with ``limit``, a keyset page: at most ``limit`` things named after ``after``."""
        return [{**(r.body or {}), "thingArn": self._arn(r.key)} for r in self._ledger.listed(Kind.THING, after, limit)]

    def update(
        self,
        name: str,
        *,
        attributes: dict[str, str | None] | None = None,
        merge: bool = True,
        type_name: str | None = None,
        remove_type: bool = False,
        expected_version: int | None = None,
    ) -> dict[str, Any]:
        body = dict(self._ledger.require(Kind.THING, name, "thing").body or {})
        check_expected_version(name, body["version"], expected_version)
        if attributes is not None:
            body["attributes"] = merge_attributes(body["attributes"], attributes, merge)
        if remove_type:
            body["thingTypeName"] = None
        elif type_name is not None:
            self._types.check_usable(type_name)
            body["thingTypeName"] = type_name
        body["version"] += 1
        self._ledger.put(Kind.THING, name, body)
        return self.describe(name)

    def delete(self, name: str, expected_version: int | None = None) -> None:
        record = self._ledger.live(Kind.THING, name)
        if record is None:
            return  # DeleteThing of an absent thing succeeds, as in AWS
        check_expected_version(name, (record.body or {}).get("version"), expected_version)
        check_thing_deletable(name, bool(self._ledger.records(Kind.THING_PRINCIPAL, prefix=f"{name}|")))
        self._ledger.delete(record)

    def _summary(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"thingName": body["thingName"], "thingId": body["thingId"], "thingArn": self._arn(body["thingName"])}
