"""Batches from peers are checked whole before anything is applied."""

from __future__ import annotations

from typing import Any

import pytest

from geofleet.replication.wire import BatchError, parse_batch

GOOD = {"seq": 5, "hlc": "1795812994000.000001", "origin": "eu-west-1", "kind": "thing", "key": "t1",
        "ref": "", "body": {"thingName": "t1"}}
SHADOW = {**GOOD, "seq": 6, "kind": "shadow", "key": "t1|",
          "body": {"ops": {'["desired","a"]': ["1795812994000.000001", "eu-west-1", False, 1]}}}


def batch(*changes: dict[str, Any], region: str = "eu-west-1", head: Any = 9) -> dict[str, Any]:
    return {"region": region, "head": head, "changes": list(changes)}


def test_a_good_batch_parses() -> None:
    parsed = parse_batch(batch(GOOD, SHADOW), "eu-west-1", 4)
    assert [c.seq for c in parsed.changes] == [5, 6]
    assert parsed.head == 9


@pytest.mark.parametrize(("data", "message"), [
    ("not json object", "does not name"),
    (batch(GOOD, region="us-east-1"), "does not name eu-west-1"),
    (batch(GOOD, head="9"), "integer 'head'"),
    (batch({**GOOD, "origin": "us-east-1"}), "claims origin"),
    (batch({**GOOD, "seq": 3}), "not after 4"),
    (batch(GOOD, {**GOOD, "key": "t2"}), "not after 5"),
    (batch({**GOOD, "kind": "rocket"}), "known kind"),
    (batch({**GOOD, "hlc": "yesterday"}), "invalid HLC"),
    (batch({**GOOD, "body": [1]}), "not an object"),
    (batch({**GOOD, "key": ""}), "invalid key"),
    (batch({**SHADOW, "body": {"ops": {"p": ["x"]}}}), "malformed shadow leaf"),
    (batch({**SHADOW, "body": {}}), "needs an 'ops' object"),
    (batch({**GOOD, "kind": "thing-principal", "body": {"thingName": "t1"}}), "certificateId"),
    (batch({**GOOD, "kind": "certificate", "body": {"certificateId": "c", "certificatePem": "p", "status": "MAYBE"}}),
     "unknown certificate status"),
])
def test_bad_batches_are_refused_whole(data: Any, message: str) -> None:
    with pytest.raises(BatchError, match=message):
        parse_batch(data, "eu-west-1", 4)
