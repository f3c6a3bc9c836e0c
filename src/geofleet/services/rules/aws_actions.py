"""The ``sqs`` and ``sns`` rule actions: data leaves the fleet for AWS, as in AWS IoT.

Both are *durable*, like ``http``: what to send is prepared from the matched message and written
to the outbox (channels ``sqs`` and ``sns``) in the transaction committed before the device's
PUBACK; an ``AwsSender`` per channel sends each row with boto3 (SQS ``SendMessage``, SNS
``Publish``), retries with backoff, dead-letters after ``RetryPolicy.attempts`` tries (at once
when AWS refuses the message itself) and runs the rule's errorAction.

boto3 is an optional extra (``pip install 'geofleet[aws]'``): it is imported only when a row is
first sent. A node without it refuses sqs/sns rules at creation (``missing_aws_kinds``); a rule
replicated from a region that has it fails its sqs/sns actions here with the errorAction, saying
what to install. The AWS region of the client is the queue's or topic's own (from its URL or
ARN), as AWS IoT does. Credentials come from boto3's standard chain (environment, profile,
instance role); ``roleArn`` is kept in the rule (the same rule can be given to AWS) but the node
does not assume it. ``GEOFLEET_AWS_ENDPOINT_URL`` sends every call to another endpoint (moto in
tests, a VPC endpoint in production).

boto3 blocks: every call runs in the senders' own thread pool (never on the event loop, and
never taking the default executor's few threads from the rest of the region).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from geofleet.domain.errors import ConfigError, GeofleetError
from geofleet.domain.rules import sns_topic_region, sqs_queue_region
from geofleet.services.rules.actions import Matched, b64
from geofleet.services.rules.engine import RulesEngine
from geofleet.services.rules.senders import Failed, RetryingSender, RetryPolicy
from geofleet.store.rules_sqlite import RulesStore

AWS_KINDS = frozenset({"sqs", "sns"})
ENDPOINT_ENV = "GEOFLEET_AWS_ENDPOINT_URL"
MAX_MESSAGE_BYTES = 256 * 1024
"""SQS's and SNS's message size limit."""
SQS_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")
"""The characters an SQS message body may hold (anything else is refused by SQS)."""
PERMANENT_CODES = frozenset({"InvalidParameterValue", "InvalidParameter", "InvalidParameterException",
                             "InvalidMessageContents", "InvalidParameterValueException", "MissingParameter"})
"""AWS error codes that refuse the message itself: retrying the same message cannot succeed."""
INSTALL_HINT = "install geofleet[aws] (pip install 'geofleet[aws]') and restart the region"


def boto3_installed() -> bool:
    try:
        return importlib.util.find_spec("boto3") is not None
    except ValueError:  # sys.modules["boto3"] is None: imports of it are blocked
        return False


def missing_aws_kinds() -> frozenset[str]:
    """The action kinds this node cannot run for want of boto3 (refused at rule creation)."""
    return frozenset() if boto3_installed() else AWS_KINDS


class AwsClients:
    """boto3 clients, one per (service, AWS region), made on first use in a worker thread.

    One boto3 session for all of them (a session is not thread-safe while it makes clients: the
    lock); clients themselves are. botocore's own retries are off: the outbox retries, so that
    the attempts a dead letter reports are the real ones."""

    def __init__(self, endpoint_url: str | None, policy: RetryPolicy) -> None:
        if endpoint_url is not None and not re.match(r"^https?://[^\s/]+", endpoint_url):
            raise ConfigError(f"{ENDPOINT_ENV} {endpoint_url!r} is not an http:// or https:// URL")
        self.endpoint_url = endpoint_url
        self._policy = policy
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self.executor = ThreadPoolExecutor(max_workers=2 * policy.concurrency, thread_name_prefix="rules-aws")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], policy: RetryPolicy) -> AwsClients:
        return cls(environ.get(ENDPOINT_ENV) or None, policy)

    def client(self, service: str, region: str) -> Any:
        """The client of ``service`` in ``region`` (blocking: call it in ``executor``)."""
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                if self._session is None:
                    try:
                        boto3 = importlib.import_module("boto3")
                    except ImportError:
                        raise GeofleetError(f"the {service} action needs boto3: {INSTALL_HINT}") from None
                    self._session = boto3.session.Session()
                config = importlib.import_module("botocore.config").Config(
                    connect_timeout=self._policy.timeout_s, read_timeout=self._policy.timeout_s,
                    retries={"mode": "standard", "total_max_attempts": 1})
                client = self._session.client(service, region_name=region, endpoint_url=self.endpoint_url,
                                              config=config)
                self._clients[(service, region)] = client
            return client

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _text(output: bytes, what: str) -> str:
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError:
        raise GeofleetError(f"the message is not UTF-8 text, which {what} needs") from None
    return text


def _sized(text: str, what: str) -> str:
    size = len(text.encode())
    if size > MAX_MESSAGE_BYTES:
        raise GeofleetError(f"the message is {size} bytes; {what} takes at most {MAX_MESSAGE_BYTES}")
    return text


def _common(matched: Matched) -> dict[str, Any]:
    message = matched.message
    return {"rule": matched.rule, "topic": message.topic, "clientId": message.client_id,
            "original": b64(message.payload), "errorAction": matched.error_action}


class Sqs:
    """AWS's SqsAction: the rule's output as the message body, base64-encoded if ``useBase64``."""

    kind = "sqs"

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        return "sqs"

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        if not boto3_installed():
            raise GeofleetError(f"this region cannot run the sqs action: {INSTALL_HINT}")
        if fields.get("useBase64"):
            body = b64(matched.output)
        else:
            body = _text(matched.output, "SQS (or set useBase64)")
            if not SQS_TEXT.match(body):
                raise GeofleetError("the message holds characters SQS refuses: set useBase64 in the sqs action")
        url = str(fields["queueUrl"])
        return {"queueUrl": url, "region": sqs_queue_region(url), "body": _sized(body, "SQS"), **_common(matched)}


class Sns:
    """AWS's SnsAction: the rule's output as the message; with ``messageFormat`` JSON, SNS's
    message structure (a JSON object with a ``default`` string and per-protocol strings)."""

    kind = "sns"

    def channel(self, fields: Mapping[str, Any]) -> str | None:
        return "sns"

    def prepare(self, fields: Mapping[str, Any], matched: Matched) -> dict[str, Any]:
        if not boto3_installed():
            raise GeofleetError(f"this region cannot run the sns action: {INSTALL_HINT}")
        message = _sized(_text(matched.output, "SNS"), "SNS")
        message_format = str(fields.get("messageFormat") or "RAW")
        if message_format == "JSON":
            try:
                structure = json.loads(message)
            except ValueError:
                structure = None
            if not isinstance(structure, dict) or not isinstance(structure.get("default"), str):
                raise GeofleetError("messageFormat JSON needs the rule to produce a JSON object with a 'default' "
                                    'string (SNS\'s message structure, e.g. SELECT ... AS default); use RAW otherwise')
        arn = str(fields["targetArn"])
        return {"targetArn": arn, "region": sns_topic_region(arn), "message": message,
                "messageFormat": message_format, **_common(matched)}


def aws_kinds() -> dict[str, Sqs | Sns]:
    """The sqs and sns action kinds (registered whether or not boto3 is here: without it they fail
    with a message saying what to install, rather than as an unknown kind)."""
    return {"sqs": Sqs(), "sns": Sns()}


class AwsSender(RetryingSender):
    """Sends the rows of the ``sqs`` or the ``sns`` channel with boto3, in ``clients``' threads."""

    def __init__(self, channel: str, store: RulesStore, engine: RulesEngine, policy: RetryPolicy,
                 clients: AwsClients) -> None:
        if channel not in AWS_KINDS:
            raise ValueError(f"no AWS sender for channel {channel!r}")
        super().__init__(store, engine, policy)
        self.channel = channel
        self._clients = clients

    def describe(self, body: dict[str, Any]) -> tuple[str, str]:
        return (self.channel, str(body["queueUrl"] if self.channel == "sqs" else body["targetArn"]))

    async def attempt(self, body: dict[str, Any]) -> Failed | None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._clients.executor, self._send, body)
        except Exception as error:  # whatever boto3 raises is a failed delivery of this row
            return _failed(self.channel, error)
        return None

    def _send(self, body: dict[str, Any]) -> None:
        client = self._clients.client(self.channel, str(body["region"]))
        if self.channel == "sqs":
            client.send_message(QueueUrl=body["queueUrl"], MessageBody=body["body"])
        else:
            structure = {"MessageStructure": "json"} if body.get("messageFormat") == "JSON" else {}
            client.publish(TargetArn=body["targetArn"], Message=body["message"], **structure)

    async def close(self) -> None:
        self._clients.close()


def _failed(service: str, error: Exception) -> Failed:
    """What a boto3 failure means for the row: AWS's code and message, and whether a retry can help."""
    if isinstance(error, GeofleetError):
        return Failed(error.message)
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        detail = response.get("Error") or {}
        code = str(detail.get("Code", "?"))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode", "?")
        return Failed(f"AWS {service.upper()} answered {code} (HTTP {status}): {detail.get('Message', '')}"[:500],
                      permanent=code in PERMANENT_CODES)
    problem = f"{type(error).__name__}: {error}"[:500]
    if type(error).__name__ == "NoCredentialsError":
        problem += " (give the region AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an " \
                   "instance role)"
    return Failed(problem)


def aws_senders(store: RulesStore, engine: RulesEngine, policy: RetryPolicy, clients: AwsClients) -> list[AwsSender]:
    return [AwsSender(channel, store, engine, policy, clients) for channel in sorted(AWS_KINDS)]
