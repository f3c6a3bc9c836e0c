"""Managing topic rules as AWS IoT's control plane does (CreateTopicRule, GetTopicRule,
ListTopicRules, ReplaceTopicRule, DeleteTopicRule, Enable/DisableTopicRule), on records of
the ledger, so that a rule created in one region is replicated to every other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geofleet.domain.errors import Conflict, GeofleetError
from geofleet.domain.records import Kind
from geofleet.domain.rules import FleetContext, check_rule_name, rule_body
from geofleet.domain.rules_sql import parse
from geofleet.services.ledger import Ledger
from geofleet.services.rules.engine import now_ms


class RuleAdmin:
    def __init__(self, ledger: Ledger, fleet: FleetContext) -> None:
        self._ledger = ledger
        self._fleet = fleet

    def create(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        check_rule_name(name)
        if self._ledger.live(Kind.TOPIC_RULE, name) is not None:
            raise Conflict(f"rule {name!r} already exists: replace it (PUT /rules/{name}) or delete it first")
        body = rule_body(name, payload, self._fleet, now_ms())
        self._ledger.put(Kind.TOPIC_RULE, name, body)
        return body

    def get(self, name: str) -> dict[str, Any]:
        record = self._ledger.require(Kind.TOPIC_RULE, check_rule_name(name), "rule")
        assert record.body is not None
        return dict(record.body)

    def all(self) -> list[dict[str, Any]]:
        """AWS's ListTopicRules items: name, FROM topic, created, disabled."""
        found = []
        for record in self._ledger.records(Kind.TOPIC_RULE):
            body = record.body
            if body is None:
                continue
            try:
                topic = parse(str(body.get("sql", ""))).topic_filter
            except GeofleetError:  # a rule written by a newer version: listed, not understood
                topic = ""
            found.append({"ruleName": record.key, "topicPattern": topic, "createdAt": body.get("createdAt"),
                          "ruleDisabled": bool(body.get("ruleDisabled"))})
        return found

    def replace(self, name: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        current = self.get(name)
        body = rule_body(name, payload, self._fleet, int(current.get("createdAt") or now_ms()))
        self._ledger.put(Kind.TOPIC_RULE, name, body)
        return body

    def set_disabled(self, name: str, disabled: bool) -> dict[str, Any]:
        body = self.get(name)
        body["ruleDisabled"] = disabled
        self._ledger.put(Kind.TOPIC_RULE, name, body)
        return body

    def delete(self, name: str) -> None:
        record = self._ledger.require(Kind.TOPIC_RULE, check_rule_name(name), "rule")
        self._ledger.delete(record)
