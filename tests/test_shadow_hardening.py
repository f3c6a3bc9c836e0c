"""The shadow service under hostile input: what AWS refuses is refused with AWS's error, and
whatever is accepted can be stored, served and replicated (the hardening issue's shadow items).

Domain rules are checked on the pure functions; the serving and replication paths on a real
SQLite store, the real replication wire format, and, for the MQTT and HTTP answers, the real
three-region fleet of ``conftest.py``."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from geofleet.domain.hlc import HLC
from geofleet.domain.names import ShadowOp, ShadowRequest, parse_shadow_request
from geofleet.domain.shadow import (
    Shadow,
    ShadowError,
    apply_update,
    get_response,
    merge_remote,
    parse_json,
    parse_update,
)
from geofleet.replication.wire import change_to_json, parse_batch
from geofleet.store.sqlite import SqliteStore
from tests.conftest import Fleet
from tests.helpers import examples, wait_for
from tests.test_http_api import raw

TOO_DEEP = "JSON contains too many levels of nesting; maximum is 6"


def arrays(levels: int, leaf: str = "1") -> str:
    return "[" * levels + leaf + "]" * levels


def update_body(reported: str) -> bytes:
    return ('{"state":{"reported":' + reported + "}}").encode()


def rejection(raw_payload: bytes) -> ShadowError:
    with pytest.raises(ShadowError) as info:
        parse_update(raw_payload)
    return info.value


# --- item 3: arrays are levels ------------------------------------------------------------------


def test_arrays_count_toward_the_depth_limit() -> None:
    assert parse_update(update_body('{"a":' + arrays(5) + "}")), "object + 5 arrays = 6 levels"
    error = rejection(update_body('{"a":' + arrays(6) + "}"))
    assert (error.status, error.message) == (400, TOO_DEEP)


def test_the_attack_update_of_300_nested_arrays_is_refused() -> None:
    payload = update_body('{"x":' + arrays(300) + "}")
    assert len(payload) < 1400
    error = rejection(payload)
    assert (error.status, error.message) == (400, TOO_DEEP)


@pytest.mark.parametrize("levels", [900, 4000])
def test_very_deep_documents_are_a_400_not_a_recursion_error(levels: int) -> None:
    for payload in (update_body(arrays(levels)), update_body('{"a":' + arrays(levels) + "}"),
                    ('{"clientToken":"t","x":' + arrays(levels) + "}").encode()):
        error = rejection(payload)
        assert (error.status, error.message) == (400, TOO_DEEP)
    with pytest.raises(ShadowError):
        parse_json(('{"x":' + arrays(levels) + "}").encode())


def test_brackets_inside_strings_are_not_levels() -> None:
    request = parse_update(update_body('{"s":"' + "[{" * 100 + '\\"]"}'))
    assert request.state["reported"]["s"].startswith("[{")


# --- item 10: NaN and Infinity are not JSON -----------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", '"\\ud800"',
                                   '{"\\udfff":1}'])
def test_values_that_cannot_be_written_back_as_json_are_invalid_json(value: str) -> None:
    error = rejection(update_body('{"v":' + value + "}"))
    assert (error.status, error.message) == (400, "Invalid JSON")


def test_finite_numbers_and_paired_surrogates_are_accepted() -> None:
    numbers = '{"f":1.5e300,"n":-0.0,"i":123456789012345678901234567890,'
    request = parse_update(update_body(numbers + '"e":"\\ud83d\\ude00"}'))
    assert request.state["reported"]["e"] == "\U0001f600"


# --- anything accepted can be stored, served and replicated --------------------------------------

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())), )
json_values: st.SearchStrategy[Any] = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12)
bodies = st.one_of(
    st.fixed_dictionaries({"state": st.dictionaries(st.sampled_from(["desired", "reported"]),
                                                    st.one_of(st.none(), st.dictionaries(st.text(max_size=4),
                                                                                         json_values, max_size=4)),
                                                    max_size=2)}),
    json_values)


def _encode(body: Any) -> bytes | None:
    """The body as a device could send it: Python's encoder writes NaN and lone surrogates too."""
    try:
        return json.dumps(body).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return None


def _serve(body: Any) -> bytes:
    """What the HTTP API and the peer feed do to an answer (Starlette's JSONResponse)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                     HealthCheck.too_slow])
@given(body=bodies, nested=st.integers(0, 12))
def test_whatever_is_accepted_round_trips_through_store_answers_and_wire(tmp_path: Path, body: Any,
                                                                          nested: int) -> None:
    for _ in range(nested % 4 if nested > 8 else 0):
        body = {"state": {"reported": {"n": [body]}}}
    payload = _encode(body)
    if payload is None:
        return
    try:
        request = parse_update(payload)
        result = apply_update(Shadow(), request, 1_700_000_000, hlc=HLC(1_700_000_000_000), region="r1")
    except ShadowError as error:
        refused: ShadowError | None = error
    else:
        refused = None
    if refused is not None:
        assert 400 <= refused.status < 500
        event(f"refused {refused.status}")
        return
    event("accepted")
    for answer in (result.accepted, result.documents, result.delta):
        if answer is not None:
            assert json.loads(_serve(answer)) == answer
    store = SqliteStore(tmp_path / f"r-{abs(hash(payload))}.db")
    try:
        store.put_shadow("t1", "", result.shadow, HLC(1_700_000_000_000), "r1", ops=result.ops)
        stored = store.get_shadow("t1", "")
        assert stored is not None
        assert stored.state == result.shadow.state
        _serve(get_response(stored, "t1", None, 1_700_000_000))
        feed = {"region": "r1", "head": store.head(), "changes": [change_to_json(c) for c in store.changes(0)]}
        batch = parse_batch(json.loads(_serve(feed)), "r1", 0)
        assert batch.changes[0].body == {"ops": result.ops}
        replica = merge_remote(Shadow(), batch.changes[0].body["ops"], 1_700_000_001).shadow
        assert replica.state == result.shadow.state, "the peer shows the same document"
    finally:
        store.close()


# --- the same over the real node: MQTT /rejected and HTTP 400 ------------------------------------


def shadow_topic(thing: str, op: str, name: str = "") -> str:
    return f"$aws/things/{thing}/shadow" + (f"/name/{name}" if name else "") + f"/{op}"


HOSTILE = [
    (update_body('{"x":' + arrays(300) + "}"), TOO_DEEP),
    (update_body('{"x":' + arrays(900) + "}"), TOO_DEEP),
    (update_body('{"v":NaN}'), "Invalid JSON"),
    (update_body('{"v":Infinity}'), "Invalid JSON"),
    (update_body('{"v":-1e400}'), "Invalid JSON"),
]


def test_hostile_updates_get_a_400_rejected_over_mqtt_and_replication_keeps_flowing(fleet: Fleet) -> None:
    name = fleet.create_device()
    with fleet.device(name).connect() as device:
        device.subscribe(f"$aws/things/{name}/shadow/#")
        for payload, message in HOSTILE:
            answer = device.request(shadow_topic(name, "update"), payload)
            assert answer.topic.endswith("/update/rejected"), payload[:40]
            assert (answer.json()["code"], answer.json()["message"]) == (400, message)
        accepted = device.request(shadow_topic(name, "update"), {"state": {"reported": {"ok": 1}}})
        assert accepted.topic.endswith("/update/accepted")
    with raw(fleet, "eu-west-1") as http:
        got = wait_for(lambda: (r := http.get(f"/things/{name}/shadow")).status_code == 200 and r.json(),
                       20, "the good update to reach eu-west-1")
        assert got["state"]["reported"] == {"ok": 1}


def test_hostile_updates_get_a_400_over_http(fleet: Fleet) -> None:
    name = fleet.create_device()
    with raw(fleet) as http:
        for payload, message in HOSTILE:
            response = http.post(f"/things/{name}/shadow", content=payload)
            assert response.status_code == 400, payload[:40]
            assert response.json() == {"code": 400, "message": message}
        assert http.get(f"/things/{name}/shadow").status_code == 404, "nothing was stored"


# --- item 18: invalid shadow names over MQTT -----------------------------------------------------


def test_request_topics_parse_whatever_the_names_and_nothing_else() -> None:
    bad = parse_shadow_request("$aws/things/t1/shadow/name/bad name!/update")
    assert bad == ShadowRequest("t1", "bad name!", ShadowOp.UPDATE)
    assert bad.topic("rejected") == "$aws/things/t1/shadow/name/bad name!/update/rejected"
    assert parse_shadow_request("$aws/things/t1/shadow/update\n") is None
    assert parse_shadow_request("$aws/things/t1/shadow/update/accepted") is None


@pytest.mark.parametrize("shadow", ["bad name!", "x" * 65, "caf\u00e9"])
def test_an_invalid_shadow_name_is_answered_on_its_rejected_topic(fleet: Fleet, shadow: str) -> None:
    name = fleet.create_device()
    with fleet.device(name).connect() as device:
        device.subscribe(f"$aws/things/{name}/shadow/#")
        for op, payload in (("update", {"state": {"reported": {"a": 1}}}), ("get", ""), ("delete", "")):
            answer = device.request(shadow_topic(name, op, shadow), payload)
            assert answer.topic == shadow_topic(name, op, shadow) + "/rejected"
            body = answer.json()
            assert body["code"] == 400, body
            assert body["message"].startswith("invalid shadow name"), body
    with raw(fleet) as http:
        assert http.get(f"/api/things/shadow/ListNamedShadowsForThing/{name}").json()["results"] == []


def test_an_invalid_shadow_name_over_http_is_a_400(fleet: Fleet) -> None:
    name = fleet.create_device()
    with raw(fleet) as http:
        response = http.post(f"/things/{name}/shadow", params={"name": "bad name!"},
                             content=b'{"state":{"reported":{"a":1}}}')
        assert response.status_code == 400
        assert response.json()["message"].startswith("invalid shadow name")


# --- item 4 over the real node: nulls on absent keys are not stored in any region ----------------


def _stored_doc_bytes(fleet: Fleet, region: str, thing: str) -> int:
    uri = f"file:{fleet.data.region(region).store}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        row = db.execute("SELECT length(doc) FROM shadows WHERE thing = ? AND name = ''", (thing,)).fetchone()
    return 0 if row is None else int(row[0])


def test_forty_updates_of_nulls_on_absent_keys_stay_small_in_every_region(fleet: Fleet) -> None:
    name = fleet.create_device()
    with fleet.device(name).connect() as device:
        device.subscribe(f"$aws/things/{name}/shadow/#")
        device.request(shadow_topic(name, "update"), {"state": {"reported": {"on": True}}})
        for n in range(40):
            nulls = {f"k{i}": None for i in range(n * 450, n * 450 + 450)}
            answer = device.request(shadow_topic(name, "update"), {"state": {"reported": nulls}})
            assert answer.topic.endswith("/update/accepted")
        device.request(shadow_topic(name, "update"), {"state": {"reported": {"done": 1}}})
    for region in ("us-east-1", "eu-west-1", "ap-southeast-1"):
        with raw(fleet, region) as http:
            wait_for(lambda: http.get(f"/things/{name}/shadow").json().get("state", {}).get("reported")
                     == {"on": True, "done": 1}, 30, f"the last update in {region}")
        assert 0 < _stored_doc_bytes(fleet, region, name) < 2000, region
