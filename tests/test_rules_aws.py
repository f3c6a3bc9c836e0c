"""The ``sqs`` and ``sns`` rule actions: their fields checked at rule creation (unit), and, end to
end, a three-region fleet whose rules send to SQS and SNS, retry while AWS is unreachable, then
dead-letter and run the errorAction, and send again once AWS is back.

AWS is the one thing faked here: moto's server (``ThreadedMotoServer``, in this process) stands in
for SQS and SNS; the regions reach it over HTTP through ``GEOFLEET_AWS_ENDPOINT_URL`` with dummy
credentials, exactly as they would reach AWS (real boto3, real HTTP). Everything else is real:
the regions are processes, the devices paho clients over mutual TLS."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from moto.server import ThreadedMotoServer

from geofleet.domain.errors import ConfigError, GeofleetError, InvalidRequest
from geofleet.domain.rules import FleetContext, rule_body, sns_topic_region, sqs_queue_region
from geofleet.domain.rules_sql import Message
from geofleet.services.rules.actions import Matched
from geofleet.services.rules.aws_actions import AwsClients, Sns, Sqs, _failed, missing_aws_kinds
from geofleet.services.rules.senders import RetryPolicy
from tests.conftest import REGIONS, Fleet
from tests.helpers import geofleet, wait_for
from tests.test_rules import create_rule, device_in, observed_fleet, observer, outbox, payloads

A, B, C = REGIONS  # us-east-1, eu-west-1, ap-southeast-1
FLEET = FleetContext(frozenset(REGIONS), A)
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/hot"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:alerts"


# -- unit: the fields, checked when the rule is created ------------------------------------------

def _rule(*actions: dict[str, Any], fleet: FleetContext = FLEET, **extra: Any) -> dict[str, Any]:
    return rule_body("r1", {"sql": "SELECT * FROM 'dt/+/telemetry'", "actions": list(actions), **extra}, fleet, 1)


def test_sqs_and_sns_actions_are_stored_in_aws_shape() -> None:
    role = "arn:aws:iam::123456789012:role/iot_to_sqs"
    body = _rule({"sqs": {"queueUrl": QUEUE, "roleArn": role}}, {"sns": {"targetArn": TOPIC}},
                 errorAction={"sqs": {"queueUrl": QUEUE, "useBase64": True}})
    assert body["actions"] == [{"sqs": {"queueUrl": QUEUE, "useBase64": False, "roleArn": role}},
                               {"sns": {"targetArn": TOPIC, "messageFormat": "RAW"}}]
    assert body["errorAction"] == {"sqs": {"queueUrl": QUEUE, "useBase64": True}}


@pytest.mark.parametrize(("url", "region"), [
    (QUEUE, "us-east-1"),
    ("https://sqs.eu-west-1.amazonaws.com/123456789012/a_b-c", "eu-west-1"),
    ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
    ("https://ap-southeast-2.queue.amazonaws.com/123456789012/q", "ap-southeast-2"),
    ("https://queue.amazonaws.com/123456789012/q", "us-east-1"),
    ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/q", "us-gov-west-1"),
])
def test_the_queue_region_comes_from_its_url(url: str, region: str) -> None:
    assert sqs_queue_region(url) == region


def test_the_topic_region_comes_from_its_arn() -> None:
    assert sns_topic_region(TOPIC) == "eu-west-1"
    assert sns_topic_region("arn:aws-cn:sns:cn-north-1:123456789012:t") == "cn-north-1"


@pytest.mark.parametrize(("action", "why"), [
    ({"sqs": {}}, "actions[0].sqs: 'queueUrl' None is not an SQS queue URL"),
    ({"sqs": {"queueUrl": "http://sqs.us-east-1.amazonaws.com/123456789012/q"}}, "is not an SQS queue URL"),
    ({"sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/12345/q"}}, "12-digit account"),
    ({"sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/a/b"}}, "is not an SQS queue URL"),
    ({"sqs": {"queueUrl": "https://evil.example.com/123456789012/q"}}, "is not an SQS queue URL"),
    ({"sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/" + "q" * 81}}, "not an SQS queue"),
    ({"sqs": {"queueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/${topic(2)}"}}, "substitution template"),
    ({"sqs": {"queueUrl": QUEUE + ".fifo"}}, "FIFO queue"),
    ({"sqs": {"queueUrl": QUEUE, "useBase64": "yes"}}, "'useBase64' must be true or false"),
    ({"sqs": {"queueUrl": QUEUE, "roleArn": "admin"}}, "'roleArn' 'admin' is not an IAM role ARN"),
    ({"sqs": {"queueUrl": QUEUE, "messageGroupId": "g"}}, "unknown field(s) messageGroupId"),
    ({"sqs": QUEUE}, "the fields of the sqs action must be an object"),
    ({"sns": {}}, "actions[0].sns: 'targetArn' None is not an SNS topic ARN"),
    ({"sns": {"targetArn": "arn:aws:sqs:eu-west-1:123456789012:alerts"}}, "is not an SNS topic ARN"),
    ({"sns": {"targetArn": "arn:aws:sns:eu-west-1:123456789012"}}, "is not an SNS topic ARN"),
    ({"sns": {"targetArn": TOPIC + ".fifo"}}, "FIFO topic"),
    ({"sns": {"targetArn": TOPIC, "messageFormat": "XML"}}, "'messageFormat' 'XML' is not one of RAW, JSON"),
    ({"sns": {"targetArn": TOPIC, "subject": "x"}}, "unknown field(s) subject"),
])
def test_bad_sqs_and_sns_fields_are_refused_naming_the_field(action: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _rule(action)
    assert why in refused.value.message


def test_a_node_without_boto3_refuses_sqs_and_sns_rules_saying_what_to_install() -> None:
    without = FleetContext(frozenset(REGIONS), A, frozenset({"sqs", "sns"}))
    for action in ({"sqs": {"queueUrl": QUEUE}}, {"sns": {"targetArn": TOPIC}}):
        with pytest.raises(InvalidRequest, match=r"install geofleet\[aws\]"):
            _rule(action, fleet=without)
    with pytest.raises(InvalidRequest, match=r"errorAction: the sqs action needs boto3"):
        _rule({"republish": {"topic": "out/x"}}, fleet=without, errorAction={"sqs": {"queueUrl": QUEUE}})
    assert _rule({"republish": {"topic": "out/x"}}, fleet=without)["actions"]


def test_without_boto3_the_actions_fail_saying_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 made unimportable (as on a node installed without the aws extra)."""
    monkeypatch.setitem(sys.modules, "boto3", None)
    assert missing_aws_kinds() == {"sqs", "sns"}
    with pytest.raises(GeofleetError, match=r"install geofleet\[aws\]"):
        Sqs().prepare({"queueUrl": QUEUE}, _matched(b"{}"))
    with pytest.raises(GeofleetError, match=r"the sns action needs boto3: install geofleet\[aws\]"):
        AwsClients(None, RetryPolicy()).client("sns", "eu-west-1")


def test_the_endpoint_override_must_be_a_url() -> None:
    with pytest.raises(ConfigError, match="GEOFLEET_AWS_ENDPOINT_URL 'localhost:4566' is not an http"):
        AwsClients.from_env({"GEOFLEET_AWS_ENDPOINT_URL": "localhost:4566"}, RetryPolicy())


def _matched(output: bytes) -> Matched:
    return Matched("r1", Message("dt/d1/telemetry", output, "d1", "cert", 5), output, None)


def test_sqs_sends_text_as_is_or_base64_and_refuses_binary_without_base64() -> None:
    prepared = Sqs().prepare({"queueUrl": QUEUE, "useBase64": False}, _matched(b'{"temp":31}'))
    assert (prepared["body"], prepared["region"], prepared["queueUrl"]) == ('{"temp":31}', "us-east-1", QUEUE)
    encoded = Sqs().prepare({"queueUrl": QUEUE, "useBase64": True}, _matched(b"\xff\x00raw"))
    assert base64.b64decode(encoded["body"]) == b"\xff\x00raw"
    with pytest.raises(GeofleetError, match="not UTF-8 text"):
        Sqs().prepare({"queueUrl": QUEUE, "useBase64": False}, _matched(b"\xff\x00raw"))
    with pytest.raises(GeofleetError, match="characters SQS refuses"):
        Sqs().prepare({"queueUrl": QUEUE, "useBase64": False}, _matched(b"nul\x00"))


def test_sns_json_format_needs_a_default_message() -> None:
    fields = {"targetArn": TOPIC, "messageFormat": "JSON"}
    prepared = Sns().prepare(fields, _matched(b'{"default":"hot","email":"very hot"}'))
    assert (prepared["region"], prepared["messageFormat"]) == ("eu-west-1", "JSON")
    with pytest.raises(GeofleetError, match="'default'"):
        Sns().prepare(fields, _matched(b'{"temp":31}'))


def test_aws_failures_say_what_aws_answered_and_only_a_refused_message_is_not_retried() -> None:
    refused = ClientError({"Error": {"Code": "InvalidParameterValue", "Message": "too long"},
                           "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendMessage")
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"},
                             "ResponseMetadata": {"HTTPStatusCode": 400}}, "Publish")
    assert _failed("sqs", refused).permanent
    assert _failed("sqs", refused).problem == "AWS SQS answered InvalidParameterValue (HTTP 400): too long"
    assert not _failed("sns", throttled).permanent
    down = _failed("sqs", EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not down.permanent
    assert "EndpointConnectionError" in down.problem


# -- end to end: a fleet whose regions send to moto -----------------------------------------------

AWS_ENV = {"GEOFLEET_RULES_AWS_ATTEMPTS": "3", "GEOFLEET_RULES_AWS_TIMEOUT_S": "1",
           "GEOFLEET_RULES_AWS_BACKOFF_S": "0.1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true"}


class Moto:
    """moto's server, reached through a TCP relay on a fixed loopback port that the test can cut
    (AWS unreachable: new connections refused, open ones closed, as when the network fails) and
    restore on the same port. moto keeps its state meanwhile. A relay rather than stopping moto:
    moto's server keeps kept-alive connections served after it is stopped."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start moto (first call) and the relay."""
        if not self._started:
            self._server.start()
            self._started = True
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        host, port = self._server.get_host_and_port()
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the relay was cut
                return
            upstream = socket.create_connection((host, port))
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def cut(self) -> None:
        """AWS unreachable: the relay stops listening and closes every open connection."""
        assert self._listener is not None
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone would not)
        self._listener.close()
        self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def stop(self) -> None:
        if self._listener is not None:
            self.cut()
        self._server.stop()

    def client(self, service: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=self.url, aws_access_key_id="testing",
                            aws_secret_access_key="testing")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Moto()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def afleet(tmp_path_factory: pytest.TempPathFactory, moto: Moto) -> Iterator[Fleet]:
    """Three regions of their own whose AWS is ``moto`` (the environment is inherited by `geofleet up`
    and the regions); their AWS senders give up after 3 attempts of 1 s."""
    env = {**AWS_ENV, "GEOFLEET_AWS_ENDPOINT_URL": moto.url}
    with observed_fleet(tmp_path_factory.mktemp("rules-aws") / "fleet", env) as fleet:
        yield fleet


def _queue(moto: Moto, region: str, name: str) -> tuple[str, str]:
    """A new queue in moto: (the URL AWS would give it, the URL moto answers on)."""
    local = str(moto.client("sqs", region).create_queue(QueueName=name)["QueueUrl"])
    return f"https://sqs.{region}.amazonaws.com/123456789012/{name}", local


def _drain(moto: Moto, region: str, local_url: str, want: int, what: str, timeout: float = 20) -> list[str]:
    sqs = moto.client("sqs", region)
    got: list[str] = []

    def enough() -> bool:
        answer = sqs.receive_message(QueueUrl=local_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        for message in answer.get("Messages", []):
            got.append(str(message["Body"]))
            sqs.delete_message(QueueUrl=local_url, ReceiptHandle=message["ReceiptHandle"])
        return len(got) >= want

    wait_for(enough, timeout, what, interval=0.1)
    return got


def _replicated(fleet: Fleet, rule: str) -> None:
    for region in REGIONS:
        with fleet.admin(region) as api:
            wait_for(lambda: any(r["ruleName"] == rule for r in api.call("GET", "/rules")["rules"]), 10,
                     f"rule {rule} in {region}")


def test_a_rule_sends_what_it_selects_to_sqs_and_sns_in_the_aws_regions_they_name(afleet: Fleet, moto: Moto) -> None:
    queue, queue_local = _queue(moto, "us-east-1", "hot")
    encoded, encoded_local = _queue(moto, "us-east-1", "hot-b64")
    sns = moto.client("sns", "eu-west-1")
    topic = str(sns.create_topic(Name="alerts")["TopicArn"])
    _, subscribed_local = _queue(moto, "eu-west-1", "from-sns")
    sns.subscribe(TopicArn=topic, Protocol="sqs",
                  Endpoint=str(moto.client("sqs", "eu-west-1").get_queue_attributes(
                      QueueUrl=subscribed_local, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]))
    with afleet.admin(A) as api:
        api.call("POST", "/rules/hot_to_aws", json={
            "sql": "SELECT * FROM 'dt/+/telemetry' WHERE temp > 30",
            "actions": [{"sqs": {"queueUrl": queue, "roleArn": "arn:aws:iam::123456789012:role/iot"}},
                        {"sqs": {"queueUrl": encoded, "useBase64": True}},
                        {"sns": {"targetArn": topic, "messageFormat": "RAW"}}]})
    _replicated(afleet, "hot_to_aws")
    with device_in(afleet, B) as sensor:  # the rule was created in A: it runs in B, replicated
        for temp in (20, 31, 25, 35):
            sensor.publish(f"dt/{sensor.client_id}/telemetry", f'{{"temp":{temp},"unit":"C"}}'.encode())
    hot = ['{"temp":31,"unit":"C"}', '{"temp":35,"unit":"C"}']
    assert sorted(_drain(moto, "us-east-1", queue_local, 2, "two messages in the SQS queue")) == hot
    assert sorted(base64.b64decode(b).decode() for b in _drain(moto, "us-east-1", encoded_local, 2,
                                                              "two base64 messages in the second queue")) == hot
    envelopes = [json.loads(b) for b in _drain(moto, "eu-west-1", subscribed_local, 2, "two SNS notifications")]
    assert sorted(e["Message"] for e in envelopes) == hot
    assert {e["TopicArn"] for e in envelopes} == {topic}
    wait_for(lambda: not outbox(afleet, B)["outbox"], 10, "B's outbox emptied")
    status = outbox(afleet, B)
    assert status["sqs"]["delivered"] >= 4
    assert status["sns"]["delivered"] >= 2


def test_unreachable_aws_is_retried_then_dead_lettered_with_the_error_action_and_later_messages_flow(
        afleet: Fleet, moto: Moto) -> None:
    """In B, which holds kept-alive connections to "AWS" from the test before: the cut closes them."""
    queue, queue_local = _queue(moto, "us-east-1", "outage")
    with observer(afleet, B, "errors/#") as watcher, device_in(afleet, B) as sensor:
        name = sensor.client_id
        create_rule(afleet, B, "to_sqs", f"SELECT * FROM 'dt/{name}/reading' WHERE temp > 30",
                    {"sqs": {"queueUrl": queue}}, errorAction={"republish": {"topic": "errors/${topic(2)}"}})
        before = outbox(afleet, B)["sqs"]
        moto.cut()  # AWS unreachable from here on
        try:
            sensor.publish(f"dt/{name}/reading", b'{"temp":40}')  # PUBACKed: in B's outbox
            error = wait_for(lambda: payloads(watcher, f"errors/{name}"), 30, "the errorAction's message")[0]
        finally:
            moto.start()  # AWS reachable again
        assert (error["ruleName"], error["topic"], error["clientId"]) == ("to_sqs", f"dt/{name}/reading", name)
        assert base64.b64decode(error["base64OriginalPayload"]) == b'{"temp":40}'
        (failure,) = error["failures"]
        assert (failure["failedAction"], failure["failedResource"]) == ("SqsAction", queue)
        assert "gave up after 3 attempts" in failure["errorMessage"]
        status = outbox(afleet, B)
        assert status["sqs"]["retried"] >= before["retried"] + 2
        assert status["sqs"]["deadLettered"] == before["deadLettered"] + 1
        listed = json.loads(geofleet("rule", "outbox", "--dead-letters", "--json", "--data-dir",
                                     str(afleet.data.root), "--region", B).stdout)
        dead = next(d for d in listed if d["ruleName"] == "to_sqs")
        assert dead["action"] == {"sqs": {"queueUrl": queue}}
        sensor.publish(f"dt/{name}/reading", b'{"temp":41}')  # AWS is back: sent
        assert _drain(moto, "us-east-1", queue_local, 1, "the message sent after the outage") == ['{"temp":41}']
        assert len(payloads(watcher, f"errors/{name}")) == 1


def test_bad_sqs_and_sns_rules_are_refused_with_a_400_naming_the_field(afleet: Fleet) -> None:
    with afleet.admin(A) as api:
        with pytest.raises(InvalidRequest, match=r"actions\[0\]\.sqs: 'queueUrl' .* is not an SQS queue URL"):
            api.call("POST", "/rules/bad_sqs", json={"sql": "SELECT * FROM 'a/b'",
                                                     "actions": [{"sqs": {"queueUrl": "https://example.com/q"}}]})
        with pytest.raises(InvalidRequest, match=r"errorAction\.sns: 'messageFormat'"):
            api.call("POST", "/rules/bad_sns", json={
                "sql": "SELECT * FROM 'a/b'", "actions": [{"republish": {"topic": "c/d"}}],
                "errorAction": {"sns": {"targetArn": TOPIC, "messageFormat": "html"}}})
        assert not [r for r in api.call("GET", "/rules")["rules"] if r["ruleName"] in ("bad_sqs", "bad_sns")]
