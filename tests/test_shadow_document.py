"""Device shadow documents with AWS IoT Device Shadow semantics: request validation with AWS's
error messages, merging, metadata, versions, delta, and the response payloads."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from geofleet.domain.shadow import (
    MAX_DOCUMENT_BYTES,
    Shadow,
    ShadowError,
    UpdateResult,
    apply_update,
    compute_delta,
    delete,
    delta_message,
    get_response,
    parse_json,
    parse_update,
)

T0, T1, T2 = 1_700_000_000, 1_700_000_010, 1_700_000_020


def payload(body: Any) -> bytes:
    return json.dumps(body).encode()


def update(current: Shadow, body: dict[str, Any], now: int) -> UpdateResult:
    return apply_update(current, parse_update(payload(body)), now)


def shadow_with(state: dict[str, Any], now: int = T0) -> Shadow:
    return update(Shadow(), {"state": state}, now).shadow


def rejection(raw: bytes) -> ShadowError:
    with pytest.raises(ShadowError) as info:
        parse_update(raw)
    return info.value


# --- parse_update -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1, 2]", b'"state"', b"42", b"null"])
def test_parse_rejects_invalid_json(raw: bytes) -> None:
    error = rejection(raw)
    assert (error.status, error.message) == (400, "Invalid JSON")


@pytest.mark.parametrize("raw", [b"{}", b"", b"   ", b'{"desired": {}}', b'{"clientToken": "t"}'])
def test_parse_requires_state(raw: bytes) -> None:
    error = rejection(raw)
    assert (error.status, error.message) == (400, "Missing required node: state")


@pytest.mark.parametrize("state", [None, 1, "x", [], [{"desired": {}}], True])
def test_parse_rejects_non_object_state(state: Any) -> None:
    error = rejection(payload({"state": state}))
    assert (error.status, error.message) == (400, "State node must be an object")


@pytest.mark.parametrize("section", ["desired", "reported"])
@pytest.mark.parametrize("value", [1, "on", [], [1], True])
def test_parse_rejects_non_object_sections(section: str, value: Any) -> None:
    error = rejection(payload({"state": {section: value}}))
    assert (error.status, error.message) == (400, f"{section.capitalize()} node must be an object")


def test_section_messages_are_the_aws_wording() -> None:
    assert rejection(payload({"state": {"desired": 1}})).message == "Desired node must be an object"
    assert rejection(payload({"state": {"reported": 1}})).message == "Reported node must be an object"


@pytest.mark.parametrize("node", ["x", "delta", "metadata", "Desired"])
def test_parse_rejects_unknown_state_nodes(node: str) -> None:
    error = rejection(payload({"state": {"desired": {}, node: {}}}))
    assert (error.status, error.message) == (400, f"State contains an invalid node: '{node}'")


@pytest.mark.parametrize("version", [-1, "1", 1.5, 1.0, True, False, [1], {}])
def test_parse_rejects_invalid_versions(version: Any) -> None:
    error = rejection(payload({"state": {}, "version": version}))
    assert (error.status, error.message) == (400, "Invalid version")


@pytest.mark.parametrize("version", [0, 1, 2**40])
def test_parse_accepts_non_negative_integer_versions(version: int) -> None:
    assert parse_update(payload({"state": {}, "version": version})).version == version


def test_parse_without_version_means_any_version() -> None:
    assert parse_update(payload({"state": {}})).version is None


@pytest.mark.parametrize("token", ["x" * 65, "é" * 33, 5, ["t"], {"a": 1}, True])
def test_parse_rejects_invalid_client_tokens(token: Any) -> None:
    error = rejection(payload({"state": {}, "clientToken": token}))
    assert (error.status, error.message) == (400, "Invalid clientToken")


@pytest.mark.parametrize("token", ["", "t", "x" * 64, "é" * 32])
def test_parse_accepts_client_tokens_up_to_64_bytes(token: str) -> None:
    assert parse_update(payload({"state": {}, "clientToken": token})).client_token == token


def nested(levels: int, leaf: Any = 1) -> dict[str, Any]:
    value: dict[str, Any] = {f"l{levels}": leaf}
    for level in range(levels - 1, 0, -1):
        value = {f"l{level}": value}
    return value


@pytest.mark.parametrize("section", ["desired", "reported"])
def test_parse_accepts_six_levels_of_nesting(section: str) -> None:
    request = parse_update(payload({"state": {section: nested(6)}}))
    assert request.state[section] == nested(6)


@pytest.mark.parametrize("section", ["desired", "reported"])
def test_parse_rejects_more_than_six_levels_of_nesting(section: str) -> None:
    error = rejection(payload({"state": {section: nested(7)}, "clientToken": "tok"}))
    assert error.status == 400
    assert "too many levels of nesting" in error.message
    assert "6" in error.message
    assert error.client_token == "tok"


def test_nesting_counts_arrays_and_objects_inside_arrays() -> None:
    assert parse_update(payload({"state": {"desired": {"a": [nested(4)]}}}))
    error = rejection(payload({"state": {"desired": {"a": [1, nested(5)]}}}))
    assert "too many levels of nesting" in error.message


def _payload_of_size(size: int) -> bytes:
    head, tail = b'{"state": {"desired": {"k": "', b'"}}}'
    raw = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(raw) == size
    return raw


def test_parse_accepts_a_payload_of_exactly_8_kb() -> None:
    assert parse_update(_payload_of_size(MAX_DOCUMENT_BYTES)).state["desired"]["k"].startswith("x")


def test_parse_rejects_a_payload_over_8_kb_with_413() -> None:
    error = rejection(_payload_of_size(MAX_DOCUMENT_BYTES + 1))
    assert error.status == 413
    assert error.message == "The payload exceeds the maximum size allowed"


def test_parse_rejects_non_utf8_with_415() -> None:
    assert rejection(b'{"state": {"desired": {"k": "\xff"}}}').status == 415


def test_parse_errors_echo_the_client_token() -> None:
    error = rejection(payload({"clientToken": "tok-1"}))
    assert error.client_token == "tok-1"
    assert error.payload(T0) == {"code": 400, "message": "Missing required node: state", "timestamp": T0,
                                 "clientToken": "tok-1"}
    assert "clientToken" not in rejection(b"{").payload(T0)


def test_parse_json_returns_the_body_and_token() -> None:
    assert parse_json(b'{"clientToken": "abc", "x": 1}') == ({"clientToken": "abc", "x": 1}, "abc")
    assert parse_json(b"") == ({}, None)


# --- apply_update: merging ----------------------------------------------------------------------


def test_first_update_creates_the_shadow() -> None:
    result = update(Shadow(), {"state": {"reported": {"temp": 20}}}, T0)
    assert result.shadow.exists
    assert result.shadow.state == {"reported": {"temp": 20}}
    assert result.shadow.metadata == {"reported": {"temp": {"timestamp": T0}}}
    assert (result.shadow.version, result.shadow.timestamp) == (1, T0)


def test_update_merges_nested_objects() -> None:
    current = shadow_with({"desired": {"a": {"x": 1, "y": 2}, "b": 1}, "reported": {"r": 1}})
    result = update(current, {"state": {"desired": {"a": {"y": 3, "z": {"deep": True}}}}}, T1)
    assert result.shadow.state == {
        "desired": {"a": {"x": 1, "y": 3, "z": {"deep": True}}, "b": 1},
        "reported": {"r": 1},
    }


def test_null_deletes_a_key_and_its_metadata() -> None:
    current = shadow_with({"desired": {"a": 1, "b": 2}})
    result = update(current, {"state": {"desired": {"a": None, "missing": None}}}, T1)
    assert result.shadow.state == {"desired": {"b": 2}}
    assert result.shadow.metadata == {"desired": {"b": {"timestamp": T0}}}


def test_object_emptied_by_deletes_disappears() -> None:
    current = shadow_with({"desired": {"a": {"x": 1}, "b": 2}, "reported": {"c": {"d": {"e": 1}}}})
    result = update(current, {"state": {"desired": {"a": {"x": None}}, "reported": {"c": {"d": {"e": None}}}}}, T1)
    assert result.shadow.state == {"desired": {"b": 2}}
    assert result.shadow.metadata == {"desired": {"b": {"timestamp": T0}}}


def test_emptying_a_whole_section_removes_it() -> None:
    current = shadow_with({"desired": {"a": 1}, "reported": {"a": 1}})
    result = update(current, {"state": {"desired": {"a": None}}}, T1)
    assert result.shadow.state is not None
    assert "desired" not in result.shadow.state
    assert result.shadow.metadata is not None
    assert "desired" not in result.shadow.metadata


def test_desired_null_removes_the_whole_section() -> None:
    current = shadow_with({"desired": {"a": 1, "b": {"c": 2}}, "reported": {"a": 0}})
    result = update(current, {"state": {"desired": None}}, T1)
    assert result.shadow.state == {"reported": {"a": 0}}
    assert result.shadow.metadata == {"reported": {"a": {"timestamp": T0}}}
    assert result.shadow.version == 2


def test_reported_null_removes_the_whole_section() -> None:
    current = shadow_with({"desired": {"a": 1}, "reported": {"a": 0}})
    assert update(current, {"state": {"reported": None}}, T1).shadow.state == {"desired": {"a": 1}}


def test_arrays_replace_wholesale() -> None:
    current = shadow_with({"desired": {"list": [1, 2, 3], "objs": [{"a": 1}, {"b": 2}]}})
    result = update(current, {"state": {"desired": {"list": [4], "objs": [{"c": 3}]}}}, T1)
    assert result.shadow.state == {"desired": {"list": [4], "objs": [{"c": 3}]}}
    assert result.shadow.metadata["desired"]["list"] == [{"timestamp": T1}]
    assert result.shadow.metadata["desired"]["objs"] == [{"c": {"timestamp": T1}}]


def test_a_leaf_can_replace_an_object_and_its_metadata() -> None:
    current = shadow_with({"desired": {"a": {"x": 1}}})
    result = update(current, {"state": {"desired": {"a": 5}}}, T1)
    assert result.shadow.state == {"desired": {"a": 5}}
    assert result.shadow.metadata == {"desired": {"a": {"timestamp": T1}}}


def test_metadata_mirrors_state_when_a_leaf_becomes_an_object() -> None:
    current = shadow_with({"reported": {"a": 1}})
    result = update(current, {"state": {"reported": {"a": {"b": 2}}}}, T1)
    assert result.shadow.state == {"reported": {"a": {"b": 2}}}
    assert result.shadow.metadata == {"reported": {"a": {"b": {"timestamp": T1}}}}

    emptied = update(current, {"state": {"reported": {"a": {"b": None}}}}, T1).shadow
    assert "reported" not in emptied.metadata or "a" not in emptied.metadata["reported"]


def test_metadata_has_a_timestamp_per_leaf_and_per_array_element() -> None:
    current = shadow_with({"reported": {"a": 1, "n": {"x": "s", "y": None}, "arr": [1, [2, 3], {"k": True}]}})
    assert current.metadata == {
        "reported": {
            "a": {"timestamp": T0},
            "n": {"x": {"timestamp": T0}},
            "arr": [{"timestamp": T0}, [{"timestamp": T0}, {"timestamp": T0}], {"k": {"timestamp": T0}}],
        }
    }


def test_untouched_leaves_keep_their_timestamps() -> None:
    current = shadow_with({"reported": {"a": 1, "n": {"x": 1, "y": 2}}})
    result = update(current, {"state": {"reported": {"n": {"y": 3}}}}, T1)
    assert result.shadow.metadata == {
        "reported": {"a": {"timestamp": T0}, "n": {"x": {"timestamp": T0}, "y": {"timestamp": T1}}}
    }


def test_rewriting_the_same_value_refreshes_its_timestamp() -> None:
    current = shadow_with({"reported": {"a": 1}})
    result = update(current, {"state": {"reported": {"a": 1}}}, T1)
    assert result.shadow.metadata == {"reported": {"a": {"timestamp": T1}}}
    assert result.shadow.version == 2


def test_apply_does_not_mutate_the_current_shadow() -> None:
    current = shadow_with({"desired": {"a": {"x": 1}}, "reported": {"b": [1]}})
    before = copy.deepcopy(current.to_json())
    update(current, {"state": {"desired": {"a": {"x": None, "y": 2}}, "reported": None}}, T1)
    assert current.to_json() == before


def test_merged_document_over_8_kb_is_rejected_with_413() -> None:
    half = "x" * (MAX_DOCUMENT_BYTES // 2)
    current = shadow_with({"desired": {"a": half}})
    with pytest.raises(ShadowError) as info:
        update(current, {"state": {"reported": {"b": half}}, "clientToken": "tok"}, T1)
    assert info.value.status == 413
    assert info.value.client_token == "tok"


# --- versions -----------------------------------------------------------------------------------


def test_version_increments_with_every_accepted_update() -> None:
    shadow = Shadow()
    versions = []
    for i in range(4):
        shadow = update(shadow, {"state": {"reported": {"i": i}}}, T0 + i).shadow
        versions.append((shadow.version, shadow.timestamp))
    assert versions == [(1, T0), (2, T0 + 1), (3, T0 + 2), (4, T0 + 3)]


@pytest.mark.parametrize("stale", [0, 1, 3, 100])
def test_wrong_version_is_rejected_with_409(stale: int) -> None:
    current = update(shadow_with({"reported": {"a": 1}}), {"state": {"reported": {"a": 2}}}, T1).shadow
    assert current.version == 2
    with pytest.raises(ShadowError) as info:
        update(current, {"state": {"reported": {"a": 3}}, "version": stale, "clientToken": "tok"}, T2)
    assert (info.value.status, info.value.message, info.value.client_token) == (409, "Version conflict", "tok")


def test_matching_version_is_accepted() -> None:
    current = shadow_with({"reported": {"a": 1}})
    result = update(current, {"state": {"reported": {"a": 2}}, "version": current.version}, T1)
    assert result.shadow.version == current.version + 1
    assert result.shadow.state == {"reported": {"a": 2}}


def test_version_zero_creates_a_new_shadow() -> None:
    assert update(Shadow(), {"state": {"reported": {"a": 1}}, "version": 0}, T0).shadow.version == 1


# --- delta --------------------------------------------------------------------------------------


def test_delta_is_what_desired_asks_for_that_reported_does_not_show() -> None:
    shadow = shadow_with({
        "desired": {"color": "red", "on": True, "same": 1, "cfg": {"mode": "eco", "level": 3, "ok": "y"}},
        "reported": {"color": "blue", "same": 1, "extra": 5, "cfg": {"mode": "eco", "level": 2, "ok": "y"}},
    })
    delta, meta = compute_delta(shadow)
    assert delta == {"color": "red", "on": True, "cfg": {"level": 3}}
    assert meta == {"color": {"timestamp": T0}, "on": {"timestamp": T0}, "cfg": {"level": {"timestamp": T0}}}


def test_equal_values_give_no_delta() -> None:
    state = {"a": 1, "b": {"c": [1, {"d": "x"}]}, "s": "str"}
    assert compute_delta(shadow_with({"desired": state, "reported": state})) == ({}, {})
    assert compute_delta(shadow_with({"desired": state, "reported": {**state, "more": 1}})) == ({}, {})


def test_no_desired_means_no_delta() -> None:
    assert compute_delta(shadow_with({"reported": {"a": 1}})) == ({}, {})
    assert compute_delta(Shadow()) == ({}, {})


def test_arrays_are_compared_whole() -> None:
    shadow = shadow_with({"desired": {"l": [1, 2, 3], "same": [1, 2]}, "reported": {"l": [1, 2], "same": [1, 2]}})
    delta, meta = compute_delta(shadow)
    assert delta == {"l": [1, 2, 3]}
    assert meta == {"l": [{"timestamp": T0}] * 3}
    reordered = shadow_with({"desired": {"l": [1, 2]}, "reported": {"l": [2, 1]}})
    assert compute_delta(reordered)[0] == {"l": [1, 2]}


def test_desired_object_against_reported_leaf_is_a_whole_delta() -> None:
    shadow = shadow_with({"desired": {"a": {"x": 1}}, "reported": {"a": 7}})
    assert compute_delta(shadow)[0] == {"a": {"x": 1}}


def test_booleans_and_numbers_are_different_json_values() -> None:
    shadow = shadow_with({"desired": {"on": True, "off": [False]}, "reported": {"on": 1, "off": [0]}})
    assert compute_delta(shadow)[0] == {"on": True, "off": [False]}


def test_delta_message_when_an_update_to_desired_leaves_a_delta() -> None:
    current = shadow_with({"reported": {"color": "blue", "x": 1}})
    result = update(current, {"state": {"desired": {"color": "red", "x": 1}}, "clientToken": "tok"}, T1)
    assert result.delta == {
        "version": 2,
        "timestamp": T1,
        "state": {"color": "red"},
        "metadata": {"color": {"timestamp": T1}},
        "clientToken": "tok",
    }


def test_delta_message_state_is_the_whole_document_delta() -> None:
    current = shadow_with({"desired": {"a": 1}, "reported": {"a": 0, "b": 0}})
    result = update(current, {"state": {"desired": {"b": 2}}}, T1)
    assert result.delta is not None
    assert result.delta["state"] == {"a": 1, "b": 2}
    assert result.delta["metadata"] == {"a": {"timestamp": T0}, "b": {"timestamp": T1}}


def test_no_delta_message_when_only_reported_is_updated() -> None:
    current = shadow_with({"desired": {"a": 1}, "reported": {"a": 0}})
    result = update(current, {"state": {"reported": {"b": 5}}}, T1)
    assert compute_delta(result.shadow)[0] == {"a": 1}, "a delta exists ..."
    assert result.delta is None, "... but the update did not touch desired"


def test_no_delta_message_when_desired_matches_reported() -> None:
    current = shadow_with({"reported": {"a": 1}})
    assert update(current, {"state": {"desired": {"a": 1}}}, T1).delta is None
    assert update(current, {"state": {"desired": None}}, T1).delta is None


def test_delta_message_helper_returns_none_without_delta() -> None:
    assert delta_message(shadow_with({"desired": {"a": 1}, "reported": {"a": 1}}), "tok") is None
    message = delta_message(shadow_with({"desired": {"a": 1}}), None)
    assert message is not None
    assert "clientToken" not in message


# --- accepted and documents payloads -----------------------------------------------------------


def test_accepted_payload_echoes_the_request_with_metadata() -> None:
    current = shadow_with({"desired": {"a": 1}})
    request = {"state": {"desired": {"a": None, "b": {"c": [1, 2]}}, "reported": None}, "clientToken": "tok"}
    result = update(current, request, T1)
    assert result.accepted == {
        "state": {"desired": {"a": None, "b": {"c": [1, 2]}}, "reported": None},
        "metadata": {"desired": {"a": {"timestamp": T1}, "b": {"c": [{"timestamp": T1}, {"timestamp": T1}]}}},
        "version": 2,
        "timestamp": T1,
        "clientToken": "tok",
    }


def test_documents_previous_is_none_for_a_new_shadow() -> None:
    result = update(Shadow(), {"state": {"reported": {"a": 1}}, "clientToken": "tok"}, T0)
    assert result.documents == {
        "previous": None,
        "current": {"state": {"reported": {"a": 1}}, "metadata": {"reported": {"a": {"timestamp": T0}}},
                    "version": 1},
        "timestamp": T0,
        "clientToken": "tok",
    }


def test_documents_previous_is_the_snapshot_before_the_update() -> None:
    current = shadow_with({"desired": {"a": 1}, "reported": {"a": 0}})
    result = update(current, {"state": {"reported": {"a": 1}}}, T1)
    assert result.documents["previous"] == {
        "state": {"desired": {"a": 1}, "reported": {"a": 0}},
        "metadata": {"desired": {"a": {"timestamp": T0}}, "reported": {"a": {"timestamp": T0}}},
        "version": 1,
    }
    assert result.documents["current"] == {
        "state": {"desired": {"a": 1}, "reported": {"a": 1}},
        "metadata": {"desired": {"a": {"timestamp": T0}}, "reported": {"a": {"timestamp": T1}}},
        "version": 2,
    }
    assert result.documents["timestamp"] == T1
    assert "clientToken" not in result.documents
    assert "clientToken" not in result.accepted


# --- get ----------------------------------------------------------------------------------------


def test_get_includes_delta_only_when_non_empty() -> None:
    in_sync = shadow_with({"desired": {"a": 1}, "reported": {"a": 1}})
    body = get_response(in_sync, "", None, T2)
    assert body == {
        "state": {"desired": {"a": 1}, "reported": {"a": 1}},
        "metadata": {"desired": {"a": {"timestamp": T0}}, "reported": {"a": {"timestamp": T0}}},
        "version": 1,
        "timestamp": T2,
    }

    out_of_sync = shadow_with({"desired": {"a": 2, "b": {"c": 1}}, "reported": {"a": 1, "b": {"c": 1}}})
    body = get_response(out_of_sync, "", "tok", T2)
    assert body["state"] == {"desired": {"a": 2, "b": {"c": 1}}, "reported": {"a": 1, "b": {"c": 1}}, "delta": {"a": 2}}
    assert body["clientToken"] == "tok"
    assert out_of_sync.state is not None, "get must not store the delta"
    assert "delta" not in out_of_sync.state, "get must not store the delta"


@pytest.mark.parametrize("name", ["", "cfg"])
def test_get_of_a_missing_shadow_is_404(name: str) -> None:
    with pytest.raises(ShadowError) as info:
        get_response(Shadow(), name, "tok", T0)
    assert (info.value.status, info.value.message, info.value.client_token) == (
        404, f"No shadow exists with name: '{name}'", "tok"
    )


def test_get_of_a_deleted_shadow_is_404() -> None:
    deleted, _, _ = delete(shadow_with({"reported": {"a": 1}}), "n", None, T1)
    with pytest.raises(ShadowError) as info:
        get_response(deleted, "n", None, T2)
    assert (info.value.status, info.value.message) == (404, "No shadow exists with name: 'n'")


# --- delete -------------------------------------------------------------------------------------


def test_delete_keeps_the_version() -> None:
    current = update(shadow_with({"reported": {"a": 1}}), {"state": {"reported": {"a": 2}}}, T1).shadow
    deleted, body, _ = delete(current, "n", "tok", T2)
    assert not deleted.exists
    assert (deleted.version, deleted.timestamp, deleted.metadata) == (2, T2, {})
    assert body == {"version": 2, "timestamp": T2, "clientToken": "tok"}


def test_delete_of_a_missing_shadow_is_404() -> None:
    deleted, _, _ = delete(shadow_with({"reported": {"a": 1}}), "n", None, T1)
    with pytest.raises(ShadowError) as info:
        delete(deleted, "n", "tok", T2)
    assert (info.value.status, info.value.message, info.value.client_token) == (
        404, "No shadow exists with name: 'n'", "tok"
    )


def test_recreated_shadow_continues_the_version_and_has_no_previous() -> None:
    deleted, _, _ = delete(shadow_with({"desired": {"a": 1}}), "n", None, T1)
    result = update(deleted, {"state": {"reported": {"b": 1}}}, T2)
    assert result.shadow.version == 2
    assert result.shadow.state == {"reported": {"b": 1}}, "nothing of the deleted state comes back"
    assert result.documents["previous"] is None
    with pytest.raises(ShadowError):
        update(deleted, {"state": {"reported": {"b": 1}}, "version": 0}, T2)


# --- clientToken everywhere ----------------------------------------------------------------------


def test_client_token_is_echoed_in_every_response() -> None:
    token = "tok-42"
    result = update(shadow_with({"reported": {"a": 0}}), {"state": {"desired": {"a": 1}}, "clientToken": token}, T1)
    assert result.accepted["clientToken"] == token
    assert result.documents["clientToken"] == token
    assert result.delta is not None
    assert result.delta["clientToken"] == token
    assert get_response(result.shadow, "", token, T2)["clientToken"] == token
    assert delete(result.shadow, "", token, T2)[1]["clientToken"] == token
    with pytest.raises(ShadowError) as info:
        update(result.shadow, {"state": {}, "version": 99, "clientToken": token}, T2)
    assert info.value.payload(T2)["clientToken"] == token


def test_no_client_token_means_none_is_added() -> None:
    result = update(shadow_with({"reported": {"a": 0}}), {"state": {"desired": {"a": 1}}}, T1)
    for body in (result.accepted, result.documents, result.delta or {}, get_response(result.shadow, "", None, T2),
                 delete(result.shadow, "", None, T2)[1]):
        assert "clientToken" not in body


# --- stored form --------------------------------------------------------------------------------


def test_shadow_json_round_trip() -> None:
    shadow = shadow_with({"desired": {"a": [1, {"b": 2}]}})
    assert Shadow.from_json(json.loads(json.dumps(shadow.to_json()))) == shadow
    assert Shadow.from_json({}) == Shadow()
