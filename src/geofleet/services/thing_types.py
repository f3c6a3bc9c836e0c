"""Thing types: created, deprecated (so new things cannot use them), then deleted once unused."""

from __future__ import annotations

import time
import uuid
from functools import partial
from typing import Any

from geofleet.domain.errors import Conflict
from geofleet.domain.names import check_type_name
from geofleet.domain.records import Kind
from geofleet.domain.registry_rules import arn, check_thing_type_deletable, check_thing_type_usable
from geofleet.services.ledger import Ledger


class ThingTypes:
    def __init__(self, ledger: Ledger, account: str) -> None:
        self._ledger = ledger
        self._arn = partial(arn, ledger.region, account, "thingtype")

    def create(self, name: str, description: str = "", searchable: list[str] | None = None) -> dict[str, Any]:
        check_type_name(name)
        if self._ledger.live(Kind.THING_TYPE, name) is not None:
            raise Conflict(f"thing type {name!r} already exists")
        body = {"thingTypeName": name, "thingTypeId": str(uuid.uuid4()),
                "description": description, "searchableAttributes": list(searchable or []),
                "deprecated": False, "creationDate": int(time.time())}
        self._ledger.put(Kind.THING_TYPE, name, body)
        return {**body, "thingTypeArn": self._arn(name)}

    def describe(self, name: str) -> dict[str, Any]:
        body = self._ledger.require(Kind.THING_TYPE, name, "thing type").body or {}
        return {**body, "thingTypeArn": self._arn(name)}

    def all(self) -> list[dict[str, Any]]:
        return [r.body or {} for r in self._ledger.records(Kind.THING_TYPE)]

    def deprecate(self, name: str, undo: bool = False) -> dict[str, Any]:
        body = dict(self._ledger.require(Kind.THING_TYPE, name, "thing type").body or {})
        body["deprecated"] = not undo
        self._ledger.put(Kind.THING_TYPE, name, body)
        return body

    def delete(self, name: str) -> None:
        record = self._ledger.require(Kind.THING_TYPE, name, "thing type")
        users = [t.key for t in self._ledger.records(Kind.THING) if (t.body or {}).get("thingTypeName") == name]
        check_thing_type_deletable(name, bool((record.body or {}).get("deprecated")), users)
        self._ledger.delete(record)

    def check_usable(self, name: str) -> None:
        """Refuse a type that does not exist or is deprecated, for a new thing or enrollment."""
        body = self._ledger.require(Kind.THING_TYPE, name, "thing type").body or {}
        check_thing_type_usable(name, bool(body.get("deprecated")))
