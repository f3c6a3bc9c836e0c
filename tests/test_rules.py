"""Topic rules end to end on a three-region fleet with real paho devices: forward with WHERE,
republish with a topic template, a disabled rule, no loop between regions, forwards surviving
a SIGKILL of the receiving region, webhooks that fail then succeed or never answer (dead
letter and errorAction), rule records replicating, and bad input refused with a clear 400."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from geofleet.domain.errors import Conflict, InvalidRequest
from tests.conftest import REGIONS, Fleet
from tests.helpers import Device, geofleet, wait_for
from tests.mqtt_wire import connect_packet
from tests.test_broker_hardening import ACCEPTED, raw
from tests.test_http_hardening import peer_http

A, B, C = REGIONS  # us-east-1, eu-west-1, ap-southeast-1
HTTP_ENV = {"GEOFLEET_RULES_HTTP_ATTEMPTS": "3", "GEOFLEET_RULES_HTTP_TIMEOUT_S": "1",
            "GEOFLEET_RULES_HTTP_BACKOFF_S": "0.1"}
OBSERVER_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:ClientId}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "arn:aws:iot:*:*:topicfilter/*"},
    {"Effect": "Allow", "Action": "iot:Receive", "Resource": "arn:aws:iot:*:*:topic/*"}]})


@contextlib.contextmanager
def observed_fleet(root: Path, env: dict[str, str]) -> Iterator[Fleet]:
    """Three regions of their own, started with ``env`` in the environment (inherited by
    `geofleet up` and by regions the tests restart; restored after), with the ``observer``
    policy in every region."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    fleet = Fleet.start(root, tuple(REGIONS))
    assert isinstance(fleet, Fleet)
    try:
        fleet.wait_healthy()
        with fleet.admin(A) as api:
            api.call("POST", "/policies/observer", json={"policyDocument": OBSERVER_POLICY})
        for region in REGIONS:
            with fleet.admin(region) as api:
                wait_for(lambda: any(p["policyName"] == "observer" for p in api.call("GET", "/policies")["policies"]),
                         10, f"the observer policy in {region}")
        yield fleet
    finally:
        fleet.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def rfleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet of its own: its webhook sender gives up after 3 attempts of 1 s (tests wait less)."""
    with observed_fleet(tmp_path_factory.mktemp("rules") / "fleet", HTTP_ENV) as fleet:
        yield fleet


def observer(fleet: Fleet, region: str, *filters: str) -> Device:
    """A back-end client in ``region`` that may subscribe to anything, subscribed to ``filters``."""
    name = fleet.new_name("observer")
    fleet.create_device(name, region)
    with fleet.admin(region) as api:
        cert = str(api.call("GET", f"/things/{name}/principals")["principals"][0])
        api.call("PUT", f"/policies/observer/targets/{cert}")
    device = fleet.device(name, region).connect()
    device.subscribe(*filters)
    return device


def device_in(fleet: Fleet, region: str) -> Device:
    name = fleet.new_name("sensor")
    fleet.create_device(name, region)
    return fleet.device(name, region).connect()


def create_rule(fleet: Fleet, region: str, name: str, sql: str, *actions: dict[str, Any], **extra: Any) -> None:
    with fleet.admin(region) as api:
        api.call("POST", f"/rules/{name}", json={"sql": sql, "actions": list(actions), **extra})


def outbox(fleet: Fleet, region: str) -> dict[str, Any]:
    with fleet.admin(region) as api:
        return dict(api.call("GET", "/rules-outbox"))


def payloads(device: Device, topic: str) -> list[Any]:
    return [m.json() for m in list(device.messages) if m.topic == topic]


def test_a_rule_with_where_forwards_what_it_selects_to_another_region(rfleet: Fleet) -> None:
    with observer(rfleet, B, "fwd/#") as watcher, device_in(rfleet, A) as sensor:
        name = sensor.client_id
        create_rule(rfleet, A, "hot_to_eu", "SELECT temp, topic(2) AS device, clientid() AS cid FROM "
                    f"'dt/{name}/telemetry' WHERE temp > 30",
                    {"forward": {"region": B, "topic": "fwd/${topic(2)}/hot"}})
        for temp in (20, 31, 25, 35):
            sensor.publish(f"dt/{name}/telemetry", {"temp": temp, "unit": "C"})
        topic = f"fwd/{name}/hot"
        wait_for(lambda: len(payloads(watcher, topic)) >= 2, 15, "two forwarded messages in B")
        assert payloads(watcher, topic) == [{"temp": 31, "device": name, "cid": name},
                                            {"temp": 35, "device": name, "cid": name}]
        wait_for(lambda: not outbox(rfleet, A)["outbox"], 10, "A's outbox emptied by B's acknowledgement")
        assert payloads(watcher, topic) == [{"temp": 31, "device": name, "cid": name},
                                            {"temp": 35, "device": name, "cid": name}]


def test_republish_fills_the_topic_template_and_a_disabled_rule_does_nothing(rfleet: Fleet) -> None:
    with observer(rfleet, A, "alerts/#", "quiet/#") as watcher, device_in(rfleet, A) as sensor:
        name = sensor.client_id
        create_rule(rfleet, A, "alerts", f"SELECT *, timestamp() AS at FROM 'dt/{name}/status'",
                    {"republish": {"topic": "alerts/${topic(2)}/${clientid()}", "qos": 1}})
        create_rule(rfleet, A, "quiet", f"SELECT * FROM 'dt/{name}/quiet'",
                    {"republish": {"topic": "quiet/${topic(2)}"}}, ruleDisabled=True)
        sensor.publish(f"dt/{name}/quiet", {"n": 1})  # the disabled rule's message, routed first
        sensor.publish(f"dt/{name}/status", {"ok": True})
        got = wait_for(lambda: payloads(watcher, f"alerts/{name}/{name}"), 10, "the republished message")
        assert got[0]["ok"] is True
        assert isinstance(got[0]["at"], int)
        assert payloads(watcher, f"quiet/{name}") == [], "a disabled rule does nothing"
        geofleet("rule", "enable", "quiet", "--data-dir", str(rfleet.data.root), "--region", A)
        sensor.publish(f"dt/{name}/quiet", {"n": 2})
        assert wait_for(lambda: payloads(watcher, f"quiet/{name}"), 10, "the enabled rule's message") == [{"n": 2}]


def test_a_forwarded_message_is_never_forwarded_back(rfleet: Fleet) -> None:
    with observer(rfleet, A, "dt/+/loop") as in_a, observer(rfleet, B, "dt/+/loop") as in_b, \
            device_in(rfleet, A) as sensor:
        create_rule(rfleet, A, "loop_a_to_b", "SELECT * FROM 'dt/+/loop'", {"forward": {"region": B}})
        create_rule(rfleet, B, "loop_b_to_a", "SELECT * FROM 'dt/+/loop'", {"forward": {"region": A}})
        topic = f"dt/{sensor.client_id}/loop"
        sensor.publish(topic, {"once": True})
        wait_for(lambda: payloads(in_b, topic), 15, "the forward in B")
        wait_for(lambda: not outbox(rfleet, A)["outbox"], 10, "B has taken the forward")
        status_b = outbox(rfleet, B)
        assert status_b["outbox"] == {}
        assert next(f for f in status_b["forwards"] if f["target"] == A)["sent"] == 0
        assert payloads(in_b, topic) == [{"once": True}]
        assert payloads(in_a, topic) == [{"once": True}], "only the device's own publish in A"


def test_forwards_survive_a_sigkill_of_the_receiving_region(rfleet: Fleet) -> None:
    sensor = device_in(rfleet, A)
    name = sensor.client_id
    create_rule(rfleet, A, "survive", f"SELECT * FROM 'dt/{name}/count'", {"forward": {"region": B, "qos": 1}})
    with observer(rfleet, B, "dt/+/count") as watcher:
        sensor.publish(f"dt/{name}/count", {"n": -1})
        wait_for(lambda: payloads(watcher, f"dt/{name}/count"), 15, "B forwards before the kill")
    rfleet.send_signal(B, signal.SIGKILL)
    with rfleet.admin(A) as api:  # hold the backlog until the test's subscriber is back in B
        api.call("POST", f"/rules-outbox/forward/{B}/pause")
    for n in range(30):
        sensor.publish(f"dt/{name}/count", {"n": n})  # each PUBACKed by A while B is dead
    assert outbox(rfleet, A)["outbox"][f"forward:{B}"]["messages"] == 30
    rfleet.restart(B)
    with observer(rfleet, B, "dt/+/count") as watcher:
        with rfleet.admin(A) as api:
            api.call("POST", f"/rules-outbox/forward/{B}/resume")
        wait_for(lambda: len(payloads(watcher, f"dt/{name}/count")) >= 30, 30, "the backlog in B")
        wait_for(lambda: not outbox(rfleet, A)["outbox"], 10, "A's outbox emptied")
        assert sorted(p["n"] for p in payloads(watcher, f"dt/{name}/count")) == list(range(30)), \
            "every message, once"
    sensor.close()


class _Webhook(BaseHTTPRequestHandler):
    fail_first = 1
    received: ClassVar[list[tuple[str, bytes, str | None]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(500)
        else:
            type(self).received.append((self.path, body, self.headers.get("x-api-key")))
            self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


@contextlib.contextmanager
def webhook() -> Iterator[str]:
    _Webhook.fail_first, _Webhook.received = 1, []
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a webhook that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        listener.close()


def test_http_action_retries_a_failing_webhook(rfleet: Fleet) -> None:
    with webhook() as url, device_in(rfleet, A) as sensor:
        name = sensor.client_id
        create_rule(rfleet, A, "hook_retry", f"SELECT temp FROM 'dt/{name}/hook'",
                    {"http": {"url": f"{url}/ingest", "headers": [{"key": "x-api-key", "value": "k1"}]}})
        sensor.publish(f"dt/{name}/hook", {"temp": 7, "other": 1})
        wait_for(lambda: _Webhook.received, 15, "the webhook's delivery after one failure")
        assert _Webhook.received == [("/ingest", b'{"temp":7}', "k1")]
        assert _Webhook.fail_first == 0, "the first attempt failed and was retried"


def test_a_webhook_that_never_answers_is_dead_lettered_and_runs_the_error_action(rfleet: Fleet) -> None:
    with silent_server() as url, observer(rfleet, A, "errors/#") as watcher, device_in(rfleet, A) as sensor:
        name = sensor.client_id
        create_rule(rfleet, A, "hook_dead", f"SELECT * FROM 'dt/{name}/dead'", {"http": {"url": url}},
                    errorAction={"republish": {"topic": "errors/${topic(2)}"}})
        sensor.publish(f"dt/{name}/dead", b"raw-bytes")
        error = wait_for(lambda: payloads(watcher, f"errors/{name}"), 30, "the errorAction's message")[0]
        assert (error["ruleName"], error["topic"], error["clientId"]) == ("hook_dead", f"dt/{name}/dead", name)
        assert error["base64OriginalPayload"] == "cmF3LWJ5dGVz"
        assert error["failures"][0]["failedAction"] == "HttpAction"
        assert error["failures"][0]["failedResource"] == url
        assert "gave up after 3 attempts" in error["failures"][0]["errorMessage"]
        listed = geofleet("rule", "outbox", "--dead-letters", "--json", "--data-dir", str(rfleet.data.root),
                          "--region", A).stdout
        assert any(d["ruleName"] == "hook_dead" for d in json.loads(listed))


def test_rule_records_replicate_and_bad_rules_are_refused(rfleet: Fleet) -> None:
    root = str(rfleet.data.root)
    geofleet("rule", "create", "everywhere", "--sql", "SELECT * FROM 'x/#'", "--action",
             '{"republish": {"topic": "y/${topic(2)}"}}', "--data-dir", root, "--region", A)

    def listed_in_c() -> bool:
        with rfleet.admin(C) as api:
            return any(r["ruleName"] == "everywhere" for r in api.call("GET", "/rules")["rules"])

    wait_for(listed_in_c, 10, "the rule replicated to C")
    with rfleet.admin(C) as api:
        assert api.call("GET", "/rules/everywhere")["rule"]["actions"] == [{"republish": {"topic": "y/${topic(2)}",
                                                                                          "qos": 0}}]
        with pytest.raises(Conflict, match="already exists"):
            api.call("POST", "/rules/everywhere", json={"sql": "SELECT * FROM 'x'",
                                                        "actions": [{"republish": {"topic": "z"}}]})
        for body, why in [
            ({"sql": "SELECT * FROM 'a' WHERE x LIKE 'y'", "actions": [{"republish": {"topic": "b"}}]},
             "found 'LIKE'"),
            ({"sql": "SELECT * FROM 'a'", "actions": [{"lambda": {}}]}, "unknown action 'lambda'"),
            ({"sql": "SELECT * FROM 'a'", "actions": [{"forward": {"region": "mars-1"}}]}, "not a region"),
        ]:
            with pytest.raises(InvalidRequest, match=why):
                api.call("POST", "/rules/bad", json=body)
    refused = geofleet("rule", "create", "bad", "--sql", "SELECT * FROM a", "--action", '{"republish": {}}',
                       "--data-dir", root, "--region", A, check=False)
    assert refused.returncode == 2
    assert "FROM topic filter" in refused.stderr
    assert "Traceback" not in refused.stderr
    refused = geofleet("rule", "create", "bad", "--sql", "SELECT * FROM 'a'", "--action", "{not json",
                       "--data-dir", root, "--region", A, check=False)
    assert refused.returncode == 2
    assert "--action is not valid JSON" in refused.stderr
    geofleet("rule", "delete", "everywhere", "--data-dir", root, "--region", C)
    wait_for(lambda: not any(r["ruleName"] == "everywhere" for r in json.loads(geofleet(
        "rule", "list", "--json", "--data-dir", root, "--region", A).stdout)), 10, "the delete replicated to A")


def test_a_last_will_goes_through_the_rules(rfleet: Fleet) -> None:
    name = rfleet.create_device(region=A)
    with observer(rfleet, A, "gone/#") as watcher:
        create_rule(rfleet, A, "wills", f"SELECT *, clientid() AS who FROM 'dt/{name}/will'",
                    {"republish": {"topic": "gone/${clientid()}"}})
        client = raw(rfleet, name, A)
        assert client.connect(connect_packet(name, will=(f"dt/{name}/will", b'{"online":false}', False))) == ACCEPTED
        client.close()  # no DISCONNECT: the broker publishes the Last Will
        got = wait_for(lambda: payloads(watcher, f"gone/{name}"), 10, "the Last Will through the rule")
        assert got == [{"online": False, "who": name}]


def test_an_action_that_cannot_run_runs_the_error_action_at_once(rfleet: Fleet) -> None:
    with observer(rfleet, A, "failed/#", "never/#") as watcher, device_in(rfleet, A) as sensor:
        name = sensor.client_id
        create_rule(rfleet, A, "holey", f"SELECT * FROM 'dt/{name}/holey'",
                    {"republish": {"topic": "never/${topic(5)}"}}, errorAction={"republish": {"topic": "failed/holey"}})
        sensor.publish(f"dt/{name}/holey", {"x": 1})
        error = wait_for(lambda: payloads(watcher, "failed/holey"), 10, "the errorAction")[0]
        assert error["failures"][0]["failedAction"] == "RepublishAction"
        assert "no value for ${topic(5)}" in error["failures"][0]["errorMessage"]
        assert not [m for m in watcher.messages if m.topic.startswith("never/")]


def test_the_forward_route_takes_only_well_formed_batches_from_its_peers(rfleet: Fleet) -> None:
    with observer(rfleet, A, "spoof/#", "$aws/things/+/shadow/#") as watcher:
        with peer_http(rfleet, A, as_region=B) as peer:
            wrong = peer.post("/v1/forward", params={"peer": C}, json={"epoch": "e", "items": []})
            assert wrong.status_code == 403  # B's certificate cannot speak for C
            assert peer.post("/v1/forward", params={"peer": B}, json={"epoch": "", "items": []}).status_code == 400
            assert peer.post("/v1/forward", params={"peer": B},
                             json={"epoch": "e", "items": [{"seq": 2}, {"seq": 1}]}).status_code == 400
            item = {"payload": base64.b64encode(b"{}").decode(), "clientId": "x", "principal": "", "timestamp": 0}
            answer = peer.post("/v1/forward", params={"peer": B}, json={"epoch": "hostile", "items": [
                {"seq": 1, "topic": "$aws/things/x/shadow/update/accepted", **item},
                {"seq": 2, "topic": "spoof/+", **item},
                {"seq": 3, "topic": "spoof/ok", **item},
                {"seq": 4, "topic": "spoof/ok", **item, "payload": "not base64!"}]})
            assert answer.status_code == 200
            body = answer.json()
            assert body["through"] == 4
            assert [r["seq"] for r in body["refused"]] == [1, 2, 4]
            again = peer.post("/v1/forward", params={"peer": B}, json={"epoch": "hostile", "items": [
                {"seq": 3, "topic": "spoof/ok", **item}]}).json()
            assert again == {"region": A, "through": 3, "refused": []}  # seen: taken, not published again
        wait_for(lambda: payloads(watcher, "spoof/ok"), 10, "the one valid item")
        assert [m.topic for m in watcher.messages] == ["spoof/ok"]
