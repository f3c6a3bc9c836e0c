"""Durable application consumers as registry records: created, updated (filters), listed and
deleted through the ledger, so they replicate to every region like things and policies, and
every region journals what matches their filters (``services/journal.py``)."""

from __future__ import annotations

import time

from geofleet.domain.consumers import MAX_CONSUMERS, check_consumer_name, check_filters, consumer_body
from geofleet.domain.errors import Conflict
from geofleet.domain.json_types import Json
from geofleet.domain.records import Kind
from geofleet.services.ledger import Ledger


class Consumers:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def put(self, name: str, filters: object) -> tuple[Json, bool]:
        """Create the consumer, or replace its filters (its offsets stay); returns its body and
        whether it was created. Filters may change: what was journaled stays as it was."""
        check_consumer_name(name)
        checked = check_filters(filters)
        current = self._ledger.live(Kind.CONSUMER, name)
        if current is None and len(self._ledger.records(Kind.CONSUMER)) >= MAX_CONSUMERS:
            raise Conflict(f"the fleet has {MAX_CONSUMERS} consumers, the most it may have: delete one first")
        created = int((current.body or {}).get("createdAt", 0)) if current is not None else time.time_ns() // 10**6
        body = consumer_body(name, checked, created)
        if current is None or current.body != body:
            self._ledger.put(Kind.CONSUMER, name, body)
        return body, current is None

    def get(self, name: str) -> Json:
        check_consumer_name(name)
        return dict(self._ledger.require(Kind.CONSUMER, name, "consumer").body or {})

    def all(self) -> list[Json]:
        return [dict(r.body or {}) for r in self._ledger.records(Kind.CONSUMER)]

    def delete(self, name: str) -> None:
        check_consumer_name(name)
        self._ledger.delete(self._ledger.require(Kind.CONSUMER, name, "consumer"))
