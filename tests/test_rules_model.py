"""Rule definitions in AWS's TopicRulePayload shape: what a rule may hold, checked at creation,
and the rules store's bounds (the outbox refuses the newest rather than growing)."""

from __future__ import annotations

from typing import Any

import pytest

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.rules import FleetContext, error_payload, failure, filters_overlap, rule_body
from geofleet.store.rules_sqlite import OutboxFull, OutboxRow, RulesStore

FLEET = FleetContext(frozenset({"us-east-1", "eu-west-1", "ap-southeast-1"}), "us-east-1")


def _rule(**payload: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sql": "SELECT * FROM 'dt/+/telemetry'", "actions": [{"forward": {"region": "eu-west-1"}}]}
    base.update(payload)
    return rule_body("r1", base, FLEET, 1)


def test_a_valid_rule_is_stored_in_aws_shape() -> None:
    body = _rule(errorAction={"republish": {"topic": "errors/${topic(2)}"}}, description="to EU")
    assert body == {"ruleName": "r1", "sql": "SELECT * FROM 'dt/+/telemetry'", "description": "to EU",
                    "actions": [{"forward": {"region": "eu-west-1", "qos": 0}}],
                    "errorAction": {"republish": {"topic": "errors/${topic(2)}", "qos": 0}},
                    "ruleDisabled": False, "awsIotSqlVersion": "2016-03-23", "createdAt": 1}


@pytest.mark.parametrize(("payload", "why"), [
    ({"sql": "SELECT * FROM dt"}, "FROM topic filter"),
    ({"actions": [{"lambda": {"functionArn": "x"}}]}, "unknown action 'lambda'"),
    ({"actions": [{"forward": {"region": "mars-1"}}]}, "'mars-1' is not a region of this fleet"),
    ({"actions": [{"forward": {"region": "us-east-1"}}]}, "use republish"),
    ({"actions": [{"republish": {"topic": "dt/x/telemetry"}}]}, "would trigger this rule again"),
    ({"actions": [{"republish": {"topic": "dt/${topic(2)}/telemetry"}}]}, "would trigger this rule again"),
    ({"actions": [{"republish": {"topic": "out/${temp}"}}]}, "must be a function"),
    ({"actions": [{"republish": {}}]}, "'topic'"),
    ({"actions": [{"http": {"url": "ftp://x"}}]}, "http:// or https://"),
    ({"actions": [{"http": {"url": "https://x", "headers": [{"key": "a b", "value": "v"}]}}]}, "header names"),
    ({"actions": [{"republish": {"topic": "o", "qos": 2}}]}, "'qos' must be 0 or 1"),
    ({"actions": []}, "1 to 10 actions"),
    ({"actions": [{"republish": {"topic": f"o/{i}"}} for i in range(11)]}, "at most 10"),
    ({"actions": [{"republish": {"topic": "o"}, "http": {"url": "https://x"}}]}, "one key"),
    ({"actions": [{"republish": {"topic": "o", "color": "red"}}]}, "unknown field(s) color"),
    ({"ruleDisabled": "no"}, "'ruleDisabled'"),
    ({"awsIotSqlVersion": "2099"}, "awsIotSqlVersion"),
    ({"errorAction": {"nope": {}}}, "errorAction: unknown action 'nope'"),
    ({"sql": "SELECT * FROM '$aws/events/presence/connected/+'"}, "reserved"),
    ({"extra": 1}, "unknown field(s) extra"),
])
def test_bad_rules_are_refused_naming_the_problem(payload: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _rule(**payload)
    assert why in refused.value.message


@pytest.mark.parametrize("name", ["", "a-b", "a" * 129, "a b", "ü"])
def test_rule_names_follow_aws(name: str) -> None:
    with pytest.raises(InvalidRequest, match="rule name"):
        rule_body(name, {"sql": "SELECT * FROM 'a'", "actions": [{"republish": {"topic": "b"}}]}, FLEET, 1)


@pytest.mark.parametrize(("left", "right", "overlap"), [
    ("a/+", "a/b", True), ("a/#", "x", False), ("#", "x/y", True), ("a/b", "a/b/c", False),
    ("a/+/c", "a/b/+", True), ("a/b", "a/c", False), ("a", "a/#", True),
])
def test_filters_overlap(left: str, right: str, overlap: bool) -> None:
    assert filters_overlap(left, right) is overlap
    assert filters_overlap(right, left) is overlap


def test_error_payload_is_aws_shape() -> None:
    assert error_payload("r", "dt/x", "x", b"hi", [failure("http", "https://h", "boom")]) == {
        "ruleName": "r", "topic": "dt/x", "clientId": "x", "base64OriginalPayload": "aGk=",
        "failures": [{"failedAction": "HttpAction", "failedResource": "https://h", "errorMessage": "boom"}]}


def test_the_outbox_is_bounded_and_refuses_the_newest() -> None:
    store = RulesStore(":memory:", max_rows=3)
    with store.atomic():
        ids = [store.enqueue("forward:b", {"n": n}, 0) for n in range(3)]
    with pytest.raises(OutboxFull, match="full"), store.atomic():
        store.enqueue("forward:b", {"n": 3}, 0)
    assert [row.body["n"] for row in store.batch("forward:b", 10, 1 << 20)] == [0, 1, 2]  # oldest kept
    store.enqueue("http", {"n": 0}, 0)  # another channel has room of its own
    store.remove("forward:b", ids[:1])
    store.enqueue("forward:b", {"n": 4}, 0)
    assert store.depth()["forward:b"]["messages"] == 3


def test_dead_letters_keep_the_newest() -> None:
    store = RulesStore(":memory:", max_dead_letters=2)
    for n in range(4):
        row_id = store.enqueue("http", {"n": n}, 0)
        store.dead_letter("http", OutboxRow(row_id, {"n": n}, 5, 0), "r", {"http": {"url": "u"}}, f"e{n}", n)
    assert [d["errorMessage"] for d in store.dead_letters()] == ["e3", "e2"]
    assert store.depth() == {}


def test_the_receiver_position_only_moves_forward() -> None:
    store = RulesStore(":memory:")
    store.set_mark("a", "epoch1", 10)
    store.set_mark("a", "epoch1", 5)
    assert (store.mark("a", "epoch1"), store.mark("a", "epoch2"), store.mark("b", "epoch1")) == (10, 0, 0)
