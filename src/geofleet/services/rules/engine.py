"""The rules engine of one region: which rules a message matches, what they produce, and their
actions, run at once (republish) or written durably to the outbox (forward, http).

The gate calls ``on_device_message`` for every publish the broker accepted (live or Last Will),
*before* the device's PUBACK: the outbox rows of every durable action of every matching rule
are committed in one transaction first, so an acknowledged message is never lost by a crash.

Rule records are replicated, so every region runs every rule on the messages *its* devices
publish (as one would deploy the same rule in each AWS region); in the region a forward names,
that forward does nothing (the message is already there).

Rules are compiled once (SQL parsed, FROM filters in a topic trie) and again when a rule record
changes, here or by replication: a message costs one trie lookup, whatever the number of rules
that do not match it. A rule whose record cannot be compiled (written by a newer version, or for
a region this node does not know) is skipped with a log line rather than breaking the others.

Residency: the rules do not run on a message whose device may not keep its data in this region
(a Last Will published as the region left the device's scope, a forward that raced a scope
change): what they produce would rest here. Such messages are counted (``outOfScope``) and
logged. A forward's target must be in the device's scope too (``services.rules.residency``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geofleet.broker.base import Broker
from geofleet.domain.errors import GeofleetError
from geofleet.domain.records import Kind, Record
from geofleet.domain.rules import action_kind, error_payload, failure
from geofleet.domain.rules_sql import Message, Statement, evaluate, fields_of, parse
from geofleet.domain.topics import TopicFilterIndex
from geofleet.services.ledger import Ledger
from geofleet.services.rules.actions import MAX_REPUBLISH_HOPS, ActionKind, Matched, encode_output
from geofleet.services.rules.residency import Scopes
from geofleet.store.rules_sqlite import RulesStore

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    statement: Statement
    actions: tuple[Mapping[str, Any], ...]
    error_action: Mapping[str, Any] | None


class RulesEngine:
    def __init__(self, ledger: Ledger, store: RulesStore, broker: Broker, kinds: Mapping[str, ActionKind],
                 region: str, scopes: Scopes) -> None:
        """``scopes``: the devices' residency scopes (which messages this region may act on)."""
        self._region = region
        self._scopes = scopes
        self._ledger = ledger
        self._store = store
        self._broker = broker
        self._kinds = dict(kinds)
        self._rules: dict[str, CompiledRule] = {}
        self._by_filter: dict[str, list[CompiledRule]] = {}
        self._index = TopicFilterIndex()
        self._stale = True
        self._wakers: dict[str, list[Any]] = {}
        self._failure_log: dict[str, tuple[float, int]] = {}
        self.counters = {"evaluated": 0, "matched": 0, "actionsFailed": 0, "republishHopLimit": 0, "outOfScope": 0}
        ledger.observe(self._changed)

    # -- the rule set ----------------------------------------------------------------------

    def _changed(self, previous: Record | None, record: Record) -> None:
        if record.kind is Kind.TOPIC_RULE:
            self._stale = True  # compiled on the next message: this may run inside a registry transaction

    def _compile(self) -> None:
        self._rules.clear()
        self._by_filter.clear()
        self._index = TopicFilterIndex()
        for record in self._ledger.records(Kind.TOPIC_RULE):
            body = record.body
            if body is None or body.get("ruleDisabled"):
                continue
            try:
                rule = CompiledRule(record.key, parse(str(body.get("sql", ""))), tuple(body.get("actions") or ()),
                                    body.get("errorAction"))
            except GeofleetError as error:
                log.warning("rule %s is skipped: %s", record.key, error.message)
                continue
            self._rules[rule.name] = rule
            self._by_filter.setdefault(rule.statement.topic_filter, []).append(rule)
            self._index.add(rule.statement.topic_filter)
        self._stale = False

    def active(self) -> list[str]:
        if self._stale:
            self._compile()
        return sorted(self._rules)

    def on_wake(self, channel: str, wake: Any) -> None:
        """``wake()`` is called after rows of ``channel`` are committed (its sender starts at once)."""
        self._wakers.setdefault(channel, []).append(wake)

    # -- messages --------------------------------------------------------------------------

    async def on_device_message(self, client_id: str, principal: str, topic: str, payload: bytes) -> None:
        await self.process(Message(topic, payload, client_id, principal, now_ms()))

    async def process(self, message: Message, *, forwarded: bool = False, hops: int = 0) -> None:
        """Run every enabled rule whose FROM matches ``message``: durable actions are committed
        to the outbox before this returns; immediate ones have run."""
        if self._stale:
            self._compile()
        if not self._rules:
            return
        if not self._scopes.scope(message.client_id).includes(self._region):
            self.counters["outOfScope"] += 1
            self._log_limited("(residency)", f"rules: device {message.client_id!r} may not keep its "
                              f"data in {self._region} (its residency scope): its message on {message.topic} is "
                              "not acted on here")
            return
        matched: list[tuple[CompiledRule, Matched]] = []
        filters = self._index.match(message.topic)
        fields = fields_of(message.payload) if filters else None  # decoded once for every rule
        for topic_filter in filters:
            for rule in self._by_filter.get(topic_filter, ()):
                self.counters["evaluated"] += 1
                try:
                    output = evaluate(rule.statement, message, fields)
                except Exception:  # a bug in one rule's evaluation must not stop the message
                    log.exception("rule %s could not evaluate a message on %s", rule.name, message.topic)
                    continue
                if output is not None:
                    matched.append((rule, Matched(rule.name, message, encode_output(output), rule.error_action,
                                                  hops, forwarded)))
        if not matched:
            return
        self.counters["matched"] += len(matched)
        immediate: list[tuple[CompiledRule, Matched, str, dict[str, Any]]] = []
        failures: dict[str, list[dict[str, str]]] = {}
        woken: set[str] = set()
        with self._store.atomic():
            for rule, match in matched:
                for action in rule.actions:
                    kind_name, fields = action_kind(action)
                    if kind_name == "forward" and (forwarded or fields.get("region") == self._region):
                        # a forwarded message is never forwarded again (no loops between regions),
                        # and a rule (replicated everywhere) forwarding to this region is already here
                        continue
                    try:
                        prepared, channel = self._prepare(kind_name, fields, match)
                        if channel is None:
                            immediate.append((rule, match, kind_name, prepared))
                        else:
                            self._store.enqueue(channel, prepared, message.timestamp_ms, message.client_id)
                            woken.add(channel)
                    except GeofleetError as error:
                        failures.setdefault(rule.name, []).append(failure(kind_name, _resource(fields),
                                                                          error.message))
        self._wake(woken)
        for rule, match, kind_name, prepared in immediate:
            try:
                await self._run_immediate(kind_name, prepared, match)
            except GeofleetError as error:
                failures.setdefault(rule.name, []).append(failure(kind_name, prepared.get("topic", ""),
                                                                  error.message))
        for rule_name, failed in failures.items():
            self.counters["actionsFailed"] += len(failed)
            failed_rule = self._rules.get(rule_name)
            self._log_failure(rule_name, message.topic, "; ".join(f["errorMessage"] for f in failed))
            if failed_rule is not None and failed_rule.error_action is not None:
                await self.run_error_action(rule_name, failed_rule.error_action, message, failed)

    def _log_failure(self, rule: str, topic: str, problem: str) -> None:
        self._log_limited(rule, f"rule {rule}: action(s) failed for {topic}: {problem}")

    def _log_limited(self, key: str, line: str) -> None:
        """At most one line per key (a rule) every ``FAILURE_LOG_INTERVAL_S`` (a device publishing
        fast into a failing rule must not flood the log); the lines say how many were not logged."""
        now = time.monotonic()
        last, skipped = self._failure_log.get(key, (0.0, 0))
        if now - last < FAILURE_LOG_INTERVAL_S:
            self._failure_log[key] = (last, skipped + 1)
            return
        self._failure_log[key] = (now, 0)
        more = f" ({skipped} more since the last line)" if skipped else ""
        log.warning("%s%s", line, more)

    async def _run_immediate(self, kind: str, prepared: dict[str, Any], match: Matched) -> None:
        if kind != "republish":
            raise GeofleetError(f"no immediate action {kind!r}")
        if match.hops >= MAX_REPUBLISH_HOPS:
            self.counters["republishHopLimit"] += 1
            raise GeofleetError(f"the message has been republished {match.hops} times by rules; at most "
                                f"{MAX_REPUBLISH_HOPS} (a cycle between rules?)")
        topic = str(prepared["topic"])
        await self._broker.publish(topic, match.output, int(prepared["qos"]))
        message = match.message
        await self.process(Message(topic, match.output, message.client_id, message.principal, message.timestamp_ms),
                           forwarded=match.forwarded, hops=match.hops + 1)

    async def run_error_action(self, rule: str, action: Mapping[str, Any], message: Message,
                               failures: list[dict[str, str]]) -> None:
        """AWS's errorAction: once per failed message, with what failed; its own failure is only logged."""
        payload = encode_output(error_payload(rule, message.topic, message.client_id, message.payload, failures))
        kind_name, fields = action_kind(action)
        error_message = Message(message.topic, payload, message.client_id, message.principal, message.timestamp_ms)
        match = Matched(rule, error_message, payload, None, MAX_REPUBLISH_HOPS - 1)
        try:
            prepared, channel = self._prepare(kind_name, fields, match)
            if channel is None:
                await self._broker.publish(str(prepared["topic"]), payload, int(prepared["qos"]))
            else:
                with self._store.atomic():
                    self._store.enqueue(channel, prepared, now_ms(), message.client_id)
                self._wake({channel})
        except GeofleetError as error:
            log.error("rule %s: its errorAction (%s) failed too: %s", rule, kind_name, error.message)

    def _prepare(self, kind_name: str, fields: Mapping[str, Any], match: Matched) -> tuple[dict[str, Any], str | None]:
        """What an action delivers for ``match`` and its outbox channel (None: immediate);
        GeofleetError when this region cannot (an unknown kind, a template without a value)."""
        kind = self._kinds.get(kind_name)
        if kind is None:
            raise GeofleetError(f"this region has no {kind_name!r} action")
        return kind.prepare(fields, match), kind.channel(fields)

    def _wake(self, channels: set[str]) -> None:
        for channel in channels:
            for wake in self._wakers.get(channel, ()):
                wake()


def _resource(fields: Mapping[str, Any]) -> str:
    return str(fields.get("url") or fields.get("queueUrl") or fields.get("targetArn") or fields.get("region")
               or fields.get("topic") or "")
