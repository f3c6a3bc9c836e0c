"""AWS IoT SQL, the subset: what parses, what is refused (with the token and its position), and
evaluation with AWS's semantics (Undefined fields, three-valued WHERE, non-JSON payloads)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.rules_sql import Message, check_template, evaluate, parse, substitute, tokenize
from tests.helpers import examples

ACCEPTED = [
    "SELECT * FROM 'dt/+/telemetry'",
    "select * from 'dt/#'",
    "SELECT temp, humidity FROM 'dt/+/telemetry' WHERE temp > 30",
    "SELECT a.b.c AS deep, topic(2) AS device, clientid(), timestamp() AS ts, principal() AS cert FROM 'dt/#'",
    "SELECT *, topic() AS t FROM 'a/b'",
    "SELECT * FROM 'dt/+/t' WHERE NOT (temp <= 10 OR temp >= 40) AND status <> 'off'",
    "SELECT * FROM 'dt/+/t' WHERE ok = true AND level != 3.5 AND name = 'it''s'",
    "SELECT * FROM 'dt/+/t' WHERE topic(2) = 'sensor-1' AND clientid() = 'sensor-1'",
    "SELECT * FROM '$aws/events/presence/connected/+'",
    "SELECT * FROM 'dt/+/t' WHERE (((a = 1)))",
    "SELECT * FROM 'dt/+/t' WHERE t < 1e3",
]

REFUSED = [
    ("", "empty"),
    ("SELEC * FROM 'a'", "expected SELECT at position 0"),
    ("SELECT * FROM a", "the FROM topic filter as a quoted string"),
    ("SELECT * FROM 'a' WHERE", "at position 23"),
    ("SELECT * FROM 'a' WHERE x > ", "a field, a literal"),
    ("SELECT * FROM 'a' WHERE x LIKE 'y'", "found 'LIKE'"),
    ("SELECT * FROM 'a' WHERE x IN (1, 2)", "found 'IN'"),
    ("SELECT * FROM 'a' WHERE x + 1 > 2", "unexpected '+' at position 26"),
    ("SELECT * FROM 'a' WHERE x - 1 > 2", "found '-'"),
    ("SELECT * FROM 'a' WHERE x > - y", "a number after '-'"),
    ("SELECT upper(x) AS y FROM 'a'", "unsupported function 'upper' at position 7"),
    ("SELECT * FROM 'a' WHERE \"x\" = 1", "unexpected '\"' at position 24"),
    ("SELECT * FROM 'a", "unterminated string"),
    ("SELECT * FROM 'a/#/b'", "'#' may only be the last level"),
    ("SELECT * FROM 'a/b+'", "a wildcard must fill a whole level"),
    ("SELECT * FROM ''", "empty"),
    ("SELECT 1 FROM 'a'", "needs a name: add AS"),
    ("SELECT a AS FROM 'a'", "an alias"),
    ("SELECT a, b.a FROM 'a'", "selected twice"),
    ("SELECT * FROM 'a' WHERE a = 1 = 2", "AND or OR between two comparisons"),
    ("SELECT * FROM 'a' WHERE topic(0) = 'x'", "topic(n) takes a level number from 1"),
    ("SELECT * FROM 'a' WHERE topic(x) = 'x'", "')' closing topic("),
    ("SELECT * FROM 'a' ORDER BY x", "the end of the statement"),
    ("SELECT * FROM 'a'; DROP TABLE x", "unexpected ';' at position 17"),
    ("SELECT * FROM 'a' WHERE " + "(" * 40 + "a = 1" + ")" * 40, "nested deeper than 32"),
    ("SELECT * FROM '" + "a/" * 8 + "b'", "at most 7"),
    ("SELECT * FROM 'a' WHERE x = 1" + " " * 5000, "at most 4096"),
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_the_subset_parses(sql: str) -> None:
    parse(sql)


@pytest.mark.parametrize(("sql", "why"), REFUSED)
def test_anything_outside_the_subset_is_refused_with_where(sql: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match="SQL") as refused:
        parse(sql)
    assert why in refused.value.message


def _message(payload: Any, topic: str = "dt/sensor-1/telemetry") -> Message:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Message(topic, data, "sensor-1", "c" * 64, 1_700_000_000_000)


def test_select_fields_aliases_and_functions() -> None:
    statement = parse("SELECT temp, a.b AS ab, missing, topic(2) AS device, topic(9) AS none, clientid(), "
                      "timestamp() AS ts, principal() AS cert FROM 'dt/+/telemetry'")
    output = evaluate(statement, _message({"temp": 31, "a": {"b": [1, 2]}, "other": 1}))
    assert output == {"temp": 31, "ab": [1, 2], "device": "sensor-1", "clientid": "sensor-1",
                      "ts": 1_700_000_000_000, "cert": "c" * 64}  # Undefined fields are left out


def test_star_passes_the_payload_and_adds_columns() -> None:
    assert evaluate(parse("SELECT *, topic(2) AS d FROM 'dt/#'"), _message({"x": 1})) == {"x": 1, "d": "sensor-1"}


def test_a_payload_that_is_not_json_passes_unchanged_through_star() -> None:
    assert evaluate(parse("SELECT * FROM 'dt/#'"), _message(b"\x00\xffraw")) == b"\x00\xffraw"
    assert evaluate(parse("SELECT temp, topic(2) AS d FROM 'dt/#'"), _message(b"raw")) == {"d": "sensor-1"}
    assert evaluate(parse("SELECT * FROM 'dt/#' WHERE temp > 1"), _message(b"raw")) is None


@pytest.mark.parametrize(("where", "payload", "passes"), [
    ("temp > 30", {"temp": 31}, True),
    ("temp > 30", {"temp": 30}, False),
    ("temp > 30", {}, False),  # Undefined is not true
    ("NOT temp > 30", {}, False),  # NOT Undefined is Undefined
    ("temp > 30 OR ok = true", {"ok": True}, True),
    ("temp > 30 AND ok = true", {"ok": True}, False),
    ("temp = '31'", {"temp": 31}, False),  # different types: Undefined
    ("name >= 'b'", {"name": "c"}, True),
    ("ok <> false", {"ok": True}, True),
    ("ok > false", {"ok": True}, False),  # booleans are not ordered
    ("a.b = 2", {"a": {"b": 2}}, True),
    ("a.b = 2", {"a": 5}, False),
    ("topic(3) = 'telemetry' AND clientid() = 'sensor-1'", {}, True),
    ("x = 1.5", {"x": 1.5}, True),
    ("x = -1", {"x": -1}, True),
    ("x > -2.5", {"x": -1}, True),
])
def test_where_has_aws_three_valued_semantics(where: str, payload: dict[str, Any], passes: bool) -> None:
    result = evaluate(parse(f"SELECT * FROM 'dt/#' WHERE {where}"), _message(payload))
    assert (result is not None) is passes


def test_substitution_templates() -> None:
    message = _message({})
    assert substitute("out/${topic(2)}/${clientid()}", message) == "out/sensor-1/sensor-1"
    assert substitute("plain/topic", message) == "plain/topic"
    with pytest.raises(InvalidRequest, match="no value"):
        substitute("out/${topic(7)}", message)
    for bad in ("out/${temp}", "out/${upper(x)}", "out/${topic(2)", "out/${topic(2) x}"):
        with pytest.raises(InvalidRequest):
            check_template(bad)


@settings(max_examples=examples(300))
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(InvalidRequest):
        parse(text)


_fields = st.sampled_from(["a", "b", "c.d"])
_values = st.one_of(st.integers(0, 5), st.sampled_from(["'x'", "'y'", "true", "false"]))
_comparison = st.builds(lambda f, op, v: f"{f} {op} {v}", _fields, st.sampled_from(["=", "<>", "<", ">="]), _values)
_where = st.recursive(_comparison, lambda inner: st.one_of(
    st.builds(lambda a, b: f"({a} AND {b})", inner, inner),
    st.builds(lambda a, b: f"({a} OR {b})", inner, inner),
    st.builds(lambda a: f"NOT ({a})", inner)), max_leaves=8)
_payloads = st.dictionaries(st.sampled_from(["a", "b", "c"]),
                            st.one_of(st.integers(0, 5), st.sampled_from(["x", "y"]), st.booleans(),
                                      st.fixed_dictionaries({"d": st.integers(0, 5)})), max_size=3)


@settings(max_examples=examples(300))
@given(_where, _payloads)
def test_where_agrees_with_its_negation(where: str, payload: dict[str, Any]) -> None:
    """NOT flips true and false and keeps Undefined: a message never passes both a WHERE and
    its negation (the property AWS's three-valued logic guarantees)."""
    passes = evaluate(parse(f"SELECT * FROM 'dt/#' WHERE {where}"), _message(payload)) is not None
    negated = evaluate(parse(f"SELECT * FROM 'dt/#' WHERE NOT ({where})"), _message(payload)) is not None
    assert not (passes and negated)


def test_tokens_keep_positions() -> None:
    tokens = tokenize("SELECT a FROM 'x'")
    assert [(t.kind, t.position) for t in tokens] == [("keyword", 0), ("ident", 7), ("keyword", 9),
                                                       ("string", 14), ("end", 17)]
