"""AWS IoT policy evaluation: default deny, explicit Deny wins, ``*``/``?`` wildcards, policy
variables, and the default device policy keeping each thing to its own topics."""

from __future__ import annotations

import json
from typing import Any

import pytest

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.policy import (
    CLAIM_POLICY_NAME,
    DEFAULT_POLICY_NAME,
    MAX_POLICY_BYTES,
    Action,
    Policy,
    Principal,
    builtin_upgrade,
    claim_policy,
    default_device_policy,
    is_allowed,
    parse_policy,
)

REGION = "eu-west-1"
ACCOUNT = "123456789012"
TOPIC = f"arn:aws:iot:{REGION}:{ACCOUNT}:topic"
TOPICFILTER = f"arn:aws:iot:{REGION}:{ACCOUNT}:topicfilter"
CLIENT = f"arn:aws:iot:{REGION}:{ACCOUNT}:client"


def principal(client_id: str = "c1", thing_name: str | None = "t1") -> Principal:
    return Principal(client_id=client_id, thing_name=thing_name, region=REGION, account=ACCOUNT)


def statement(effect: str, action: str | list[str], resource: str | list[str]) -> dict[str, Any]:
    return {"Effect": effect, "Action": action, "Resource": resource}


def policy(*statements: dict[str, Any], name: str = "p") -> Policy:
    return parse_policy(name, {"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str | list[str]) -> Policy:
    return policy(statement("Allow", action, resource), name="allow")


def deny(action: str | list[str], resource: str | list[str]) -> Policy:
    return policy(statement("Deny", action, resource), name="deny")


# --- evaluation ---------------------------------------------------------------------------------


def test_default_is_deny() -> None:
    assert not is_allowed([], principal(), Action.PUBLISH, "a/b")
    only_other_topic = allow("iot:Publish", f"{TOPIC}/other")
    assert not is_allowed([only_other_topic], principal(), Action.PUBLISH, "a/b")


def test_allow_grants_exactly_the_named_resource() -> None:
    p = allow("iot:Publish", f"{TOPIC}/a/b")
    assert is_allowed([p], principal(), Action.PUBLISH, "a/b")
    assert not is_allowed([p], principal(), Action.PUBLISH, "a/bc")
    assert not is_allowed([p], principal(), Action.PUBLISH, "a")


def test_allow_for_one_action_does_not_grant_another() -> None:
    p = allow("iot:Publish", f"{TOPIC}/a")
    assert not is_allowed([p], principal(), Action.RECEIVE, "a")


def test_resource_type_must_match_the_action() -> None:
    """Subscribe is checked against ``topicfilter/``, publish/receive against ``topic/``,
    connect against ``client/``."""
    p = allow("iot:*", [f"{TOPIC}/a"])
    assert is_allowed([p], principal(), Action.PUBLISH, "a")
    assert is_allowed([p], principal(), Action.RECEIVE, "a")
    assert not is_allowed([p], principal(), Action.SUBSCRIBE, "a")
    assert not is_allowed([p], principal(), Action.CONNECT, "a")
    filters = allow("iot:Subscribe", f"{TOPICFILTER}/a/#")
    assert is_allowed([filters], principal(), Action.SUBSCRIBE, "a/#")
    connect = allow("iot:Connect", f"{CLIENT}/c1")
    assert is_allowed([connect], principal(), Action.CONNECT, "c1")


def test_resource_region_and_account_must_match() -> None:
    p = allow("iot:Publish", f"arn:aws:iot:us-east-1:{ACCOUNT}:topic/a")
    assert not is_allowed([p], principal(), Action.PUBLISH, "a")
    p = allow("iot:Publish", f"arn:aws:iot:{REGION}:999999999999:topic/a")
    assert not is_allowed([p], principal(), Action.PUBLISH, "a")


def test_explicit_deny_beats_allow_in_the_same_policy() -> None:
    p = policy(statement("Allow", "iot:Publish", f"{TOPIC}/*"), statement("Deny", "iot:Publish", f"{TOPIC}/secret"))
    assert is_allowed([p], principal(), Action.PUBLISH, "public")
    assert not is_allowed([p], principal(), Action.PUBLISH, "secret")


@pytest.mark.parametrize("deny_first", [True, False])
def test_explicit_deny_beats_allow_across_policies(deny_first: bool) -> None:
    policies = [allow("iot:Publish", f"{TOPIC}/*"), deny("iot:Publish", f"{TOPIC}/secret/*")]
    if deny_first:
        policies.reverse()
    assert not is_allowed(policies, principal(), Action.PUBLISH, "secret/x")
    assert is_allowed(policies, principal(), Action.PUBLISH, "public/x")


def test_deny_for_another_action_does_not_block() -> None:
    policies = [allow("iot:*", f"{TOPIC}/a"), deny("iot:Receive", f"{TOPIC}/a")]
    assert is_allowed(policies, principal(), Action.PUBLISH, "a")
    assert not is_allowed(policies, principal(), Action.RECEIVE, "a")


def test_deny_alone_is_still_deny() -> None:
    assert not is_allowed([deny("iot:Publish", f"{TOPIC}/secret")], principal(), Action.PUBLISH, "public")


# --- wildcards ----------------------------------------------------------------------------------


def test_star_matches_any_run_of_characters_including_slashes() -> None:
    p = allow("iot:Publish", f"{TOPIC}/dev/*")
    for topic in ["dev/", "dev/a", "dev/a/b/c", "dev/a+b#"]:
        assert is_allowed([p], principal(), Action.PUBLISH, topic), topic
    for topic in ["dev", "de/v", "other/dev/a"]:
        assert not is_allowed([p], principal(), Action.PUBLISH, topic), topic


def test_star_in_the_middle_of_a_pattern() -> None:
    p = allow("iot:Publish", f"{TOPIC}/dev/*/temp")
    assert is_allowed([p], principal(), Action.PUBLISH, "dev/a/temp")
    assert is_allowed([p], principal(), Action.PUBLISH, "dev/a/b/temp")
    assert not is_allowed([p], principal(), Action.PUBLISH, "dev/a/temp/x")


def test_question_mark_matches_exactly_one_character() -> None:
    p = allow("iot:Publish", f"{TOPIC}/room-?")
    assert is_allowed([p], principal(), Action.PUBLISH, "room-1")
    assert is_allowed([p], principal(), Action.PUBLISH, "room-/")
    assert not is_allowed([p], principal(), Action.PUBLISH, "room-")
    assert not is_allowed([p], principal(), Action.PUBLISH, "room-12")


def test_star_for_whole_resource_matches_everything() -> None:
    p = allow("iot:*", "*")
    for action, name in [(Action.CONNECT, "c1"), (Action.PUBLISH, "x/y"), (Action.SUBSCRIBE, "#"),
                         (Action.RECEIVE, "$aws/things/t/shadow/get")]:
        assert is_allowed([p], principal(), action, name)


def test_regex_metacharacters_in_patterns_are_literal() -> None:
    p = allow("iot:Publish", f"{TOPIC}/a.b+(c)[d]$")
    assert is_allowed([p], principal(), Action.PUBLISH, "a.b+(c)[d]$")
    assert not is_allowed([p], principal(), Action.PUBLISH, "aXb+(c)[d]$")
    assert not is_allowed([p], principal(), Action.PUBLISH, "a.bb(c)d$")


def test_wildcards_match_any_character_including_newline() -> None:
    assert is_allowed([allow("iot:Publish", f"{TOPIC}/*")], principal(), Action.PUBLISH, "a\nb")
    policies = [allow("iot:Publish", f"{TOPIC}/secret/a\nb"), deny("iot:Publish", f"{TOPIC}/secret/*")]
    assert not is_allowed(policies, principal(), Action.PUBLISH, "secret/a\nb")


# --- actions ------------------------------------------------------------------------------------


def test_action_list_grants_each_listed_action_only() -> None:
    p = allow(["iot:Publish", "iot:Receive"], f"{TOPIC}/a")
    assert is_allowed([p], principal(), Action.PUBLISH, "a")
    assert is_allowed([p], principal(), Action.RECEIVE, "a")
    assert not is_allowed([allow(["iot:Publish", "iot:Receive"], f"{TOPICFILTER}/a")], principal(),
                          Action.SUBSCRIBE, "a")


def test_iot_star_action_covers_every_action() -> None:
    p = allow("iot:*", "*")
    d = deny("iot:*", f"{TOPIC}/blocked")
    for action in Action:
        assert is_allowed([p], principal(), action, "x")
    assert not is_allowed([p, d], principal(), Action.PUBLISH, "blocked")
    assert not is_allowed([p, d], principal(), Action.RECEIVE, "blocked")
    assert is_allowed([p, d], principal(), Action.SUBSCRIBE, "blocked"), "topicfilter/ is not topic/"


# --- variables ----------------------------------------------------------------------------------


def test_client_id_variable_is_substituted() -> None:
    p = allow("iot:Connect", f"{CLIENT}/${{iot:ClientId}}")
    assert is_allowed([p], principal(client_id="dev-1"), Action.CONNECT, "dev-1")
    assert not is_allowed([p], principal(client_id="dev-1"), Action.CONNECT, "dev-2")


def test_thing_name_variable_is_substituted() -> None:
    p = allow("iot:Publish", f"{TOPIC}/things/${{iot:Connection.Thing.ThingName}}/*")
    assert is_allowed([p], principal(thing_name="t1"), Action.PUBLISH, "things/t1/x")
    assert not is_allowed([p], principal(thing_name="t1"), Action.PUBLISH, "things/t2/x")


def test_variable_values_are_matched_literally_not_as_wildcards() -> None:
    """A client id that contains '*' or regex characters must not widen the statement."""
    p = allow("iot:Publish", f"{TOPIC}/c/${{iot:ClientId}}")
    assert is_allowed([p], principal(client_id="*"), Action.PUBLISH, "c/*")
    assert not is_allowed([p], principal(client_id="*"), Action.PUBLISH, "c/anything")
    assert not is_allowed([p], principal(client_id=".+"), Action.PUBLISH, "c/anything")


def test_thing_name_statement_matches_nothing_without_a_thing() -> None:
    thing_topics = allow("iot:Publish", f"{TOPIC}/things/${{iot:Connection.Thing.ThingName}}/*")
    no_thing = principal(client_id="c1", thing_name=None)
    assert not is_allowed([thing_topics], no_thing, Action.PUBLISH, "things//x")
    assert not is_allowed([thing_topics], no_thing, Action.PUBLISH, "things/${iot:Connection.Thing.ThingName}/x")
    assert not is_allowed([thing_topics], no_thing, Action.PUBLISH, "things/c1/x")

    everything = allow("iot:Publish", f"{TOPIC}/*")
    thing_deny = deny("iot:Publish", f"{TOPIC}/things/${{iot:Connection.Thing.ThingName}}/*")
    assert is_allowed([everything, thing_deny], no_thing, Action.PUBLISH, "things/x/y"), (
        "a Deny that uses an undefined variable matches nothing either"
    )
    assert not is_allowed([everything, thing_deny], principal(thing_name="x"), Action.PUBLISH, "things/x/y")


def test_both_variables_in_one_resource() -> None:
    p = allow("iot:Publish", f"{TOPIC}/${{iot:Connection.Thing.ThingName}}/${{iot:ClientId}}")
    assert is_allowed([p], principal(client_id="c9", thing_name="t9"), Action.PUBLISH, "t9/c9")
    assert not is_allowed([p], principal(client_id="c9", thing_name="t9"), Action.PUBLISH, "c9/t9")


# --- the default device policy ------------------------------------------------------------------


@pytest.fixture
def default_policy() -> Policy:
    return parse_policy("default", default_device_policy())


def test_default_policy_round_trips_through_json(default_policy: Policy) -> None:
    assert parse_policy("default", json.dumps(default_device_policy())) == default_policy


def test_default_policy_connect_only_as_own_thing_name(default_policy: Policy) -> None:
    a = principal(client_id="a", thing_name="a")
    assert is_allowed([default_policy], a, Action.CONNECT, "a")
    assert not is_allowed([default_policy], a, Action.CONNECT, "b")
    assert not is_allowed([default_policy], a, Action.CONNECT, "ab")
    assert not is_allowed([default_policy], principal(client_id="a", thing_name=None), Action.CONNECT, "a")


@pytest.mark.parametrize("action", [Action.PUBLISH, Action.RECEIVE])
def test_default_policy_keeps_a_thing_to_its_own_topics(default_policy: Policy, action: Action) -> None:
    a = principal(client_id="a", thing_name="a")
    for own in ["dt/a/x", "dt/a/x/y", "cmd/a/reboot", "$aws/things/a/shadow/update",
                "$aws/things/a/shadow/name/cfg/get"]:
        assert is_allowed([default_policy], a, action, own), own
    for other in ["dt/ab/x", "dt/b/x", "dt/a", "dt/Ab/x", "cmd/b/reboot", "cmd/ab/x", "other/a/x",
                  "$aws/things/b/shadow/update", "$aws/things/ab/shadow/update", "$aws/things/a/jobs/get"]:
        assert not is_allowed([default_policy], a, action, other), other


def test_default_policy_subscribe_filters(default_policy: Policy) -> None:
    a = principal(client_id="a", thing_name="a")
    assert is_allowed([default_policy], a, Action.SUBSCRIBE, "$aws/things/a/shadow/#")
    assert is_allowed([default_policy], a, Action.SUBSCRIBE, "$aws/things/a/shadow/update/delta")
    assert is_allowed([default_policy], a, Action.SUBSCRIBE, "dt/a/#")
    assert not is_allowed([default_policy], a, Action.SUBSCRIBE, "$aws/things/b/shadow/#")
    assert not is_allowed([default_policy], a, Action.SUBSCRIBE, "$aws/things/+/shadow/#")
    assert not is_allowed([default_policy], a, Action.SUBSCRIBE, "dt/#")
    assert not is_allowed([default_policy], a, Action.SUBSCRIBE, "#")


def test_default_policy_grants_nothing_without_a_thing(default_policy: Policy) -> None:
    nobody = principal(client_id="a", thing_name=None)
    for action, name in [(Action.PUBLISH, "dt/a/x"), (Action.SUBSCRIBE, "dt/a/#"), (Action.RECEIVE, "dt/a/x")]:
        assert not is_allowed([default_policy], nobody, action, name)


def test_default_policy_wildcard_region_cannot_reach_another_things_topics(default_policy: Policy) -> None:
    a = principal(client_id="a", thing_name="a")
    # Topics under thing b's own trees (which b may subscribe to with dt/b/# or cmd/b/#).
    assert not is_allowed([default_policy], a, Action.PUBLISH, "dt/b/x:topic/dt/a/y")
    assert not is_allowed([default_policy], a, Action.PUBLISH, "cmd/b/reboot:topic/cmd/a/x")


# --- parse_policy -------------------------------------------------------------------------------


def test_parse_policy_accepts_a_single_statement_object_and_string_or_list_fields() -> None:
    parsed = parse_policy("p", '{"Statement": {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*"}}')
    assert parsed.name == "p"
    assert len(parsed.statements) == 1
    only = parsed.statements[0]
    assert (only.allow, only.actions, only.resources) == (False, ("iot:Publish",), ("*",))
    listed = parse_policy("p", {"Statement": [statement("Allow", ["iot:Publish", "iot:*"], ["a", "b"])]})
    assert listed.statements[0].actions == ("iot:Publish", "iot:*")
    assert listed.statements[0].resources == ("a", "b")


def _rejection(document: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        parse_policy("p", document)
    assert info.value.status == 400
    return info.value.message


def test_parse_policy_rejects_bad_json() -> None:
    assert "not valid JSON" in _rejection('{"Statement": [')


@pytest.mark.parametrize("document", ["[]", '"text"', "42"])
def test_parse_policy_rejects_non_object_documents(document: str) -> None:
    assert "must be a JSON object" in _rejection(document)


@pytest.mark.parametrize("document", [{}, {"Statement": []}, {"Statement": "x"}, {"Version": "2012-10-17"}])
def test_parse_policy_rejects_missing_or_empty_statement(document: dict[str, Any]) -> None:
    assert "'Statement'" in _rejection(document)


def test_parse_policy_rejects_non_object_statement() -> None:
    assert "Statement[0] must be an object" in _rejection({"Statement": ["Allow"]})


@pytest.mark.parametrize("effect", [None, "allow", "Permit", "", 1])
def test_parse_policy_rejects_bad_effect(effect: Any) -> None:
    message = _rejection({"Statement": [statement("Allow", "iot:*", "*"), statement(effect, "iot:*", "*")]})
    assert "Statement[1].Effect" in message
    assert "'Allow' or 'Deny'" in message


@pytest.mark.parametrize("action", ["iot:UpdateThingShadow", "s3:GetObject", "iot:publish", "*", "iot:Pub*"])
def test_parse_policy_rejects_unsupported_actions(action: str) -> None:
    message = _rejection({"Statement": [statement("Allow", ["iot:Publish", action], "*")]})
    assert "Statement[0].Action" in message
    assert repr(action) in message
    assert "not supported" in message


@pytest.mark.parametrize("value", [None, [], [1], 5, {"a": "b"}])
def test_parse_policy_rejects_bad_action_and_resource_types(value: Any) -> None:
    assert "Statement[0].Action must be a string or a non-empty list" in _rejection(
        {"Statement": [statement("Allow", value, "*")]}
    )
    assert "Statement[0].Resource must be a string or a non-empty list" in _rejection(
        {"Statement": [statement("Allow", "iot:*", value)]}
    )


@pytest.mark.parametrize("variable", ["iot:Certificate.Subject.CommonName", "iot:Connection.Thing.IsAttached",
                                      "iot:clientid"])
def test_parse_policy_rejects_unknown_variables(variable: str) -> None:
    message = _rejection({"Statement": [statement("Allow", "iot:Publish", f"{TOPIC}/${{{variable}}}/x")]})
    assert "Statement[0].Resource" in message
    assert "unsupported policy variables" in message
    assert variable in message


def test_parse_policy_rejects_thing_attribute_variables() -> None:
    resource = f"{TOPIC}/${{iot:Connection.Thing.Attributes[color]}}/x"
    assert "unsupported policy variables" in _rejection({"Statement": [statement("Allow", "iot:Publish", resource)]})


def test_parse_policy_rejects_oversized_documents() -> None:
    document = json.dumps({"Statement": [statement("Allow", "iot:Publish", "x" * MAX_POLICY_BYTES)]})
    assert str(MAX_POLICY_BYTES) in _rejection(document)


def test_a_region_upgrades_the_default_policy_only_from_the_version_it_wrote_itself() -> None:
    current = default_device_policy()
    before_retain = {**current, "Statement": [s for s in current["Statement"] if s["Action"] != "iot:RetainPublish"]}
    assert builtin_upgrade(DEFAULT_POLICY_NAME, before_retain) == current
    assert builtin_upgrade(DEFAULT_POLICY_NAME, current) is None
    edited = {**before_retain, "Statement": [*before_retain["Statement"],
                                             {"Effect": "Deny", "Action": "iot:Publish", "Resource": "*"}]}
    assert builtin_upgrade(DEFAULT_POLICY_NAME, edited) is None, "an operator's own edit is theirs to keep"


def test_any_other_claim_policy_is_replaced_by_the_current_one() -> None:
    wider = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
    assert builtin_upgrade(CLAIM_POLICY_NAME, wider) == claim_policy()
    assert builtin_upgrade(CLAIM_POLICY_NAME, claim_policy()) is None
