"""Topic rules in AWS IoT's shape: the model, its validation and the error-action payload.

A rule is a registry record (``Kind.TOPIC_RULE``, key = rule name) whose body is AWS's
``TopicRulePayload`` (``sql``, ``description``, ``actions``, ``errorAction``, ``ruleDisabled``,
``awsIotSqlVersion``) plus ``createdAt``, so that the same definition can be handed to AWS IoT
Core's ``CreateTopicRule`` unchanged. Everything is checked here, when the rule is created: a
rule that would fail on every message (malformed SQL, an unknown action, a forward to a region
the fleet does not have, a republish onto its own FROM topic) is refused with a 400 naming
the problem, instead of being stored and failing silently later.

Each action is an object with exactly one key, its kind (``{"republish": {...}}``), as in AWS.
``ACTION_KINDS`` maps a kind to the check of its fields: adding a kind (``sqs``, ``sns``) is one
entry here and one executor in ``services/rules/actions``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.limits import topic_name_problem
from geofleet.domain.rules_sql import Statement, check_template, parse

RULE_NAME = re.compile(r"^[a-zA-Z0-9_]{1,128}$")
"""AWS IoT's rule name rule."""
MAX_ACTIONS = 10
"""AWS IoT's limit of actions per rule."""
MAX_DESCRIPTION = 2048
SQL_VERSIONS = ("2015-10-08", "2016-03-23", "beta")
DEFAULT_SQL_VERSION = "2016-03-23"
MAX_HEADERS = 100
MAX_URL = 2000
FAILED_ACTION_NAMES = {"republish": "RepublishAction", "forward": "ForwardAction", "http": "HttpAction",
                       "sqs": "SqsAction", "sns": "SnsAction"}
"""How the error-action payload names a failed action (AWS: ``RepublishAction``, ``HttpAction``...)."""


@dataclass(frozen=True, slots=True)
class FleetContext:
    """What checking a rule needs to know of the fleet: its regions and which is this one."""

    regions: frozenset[str]
    region: str
    missing_extras: frozenset[str] = frozenset()
    """Action kinds whose library is not installed on this node (``sqs``/``sns`` without boto3):
    a rule using one is refused at creation, naming the extra to install."""


def check_rule_name(name: str) -> str:
    if not isinstance(name, str) or not RULE_NAME.match(name):
        raise InvalidRequest(f"rule name {name!r} is invalid: 1-128 characters of letters, digits and '_' "
                             "(AWS IoT's rule name)")
    return name


def rule_body(name: str, payload: Mapping[str, Any], fleet: FleetContext, created_at_ms: int) -> dict[str, Any]:
    """The stored body of rule ``name`` from a ``TopicRulePayload``, checked in full."""
    check_rule_name(name)
    if not isinstance(payload, Mapping):
        raise InvalidRequest("the rule must be a JSON object (AWS's TopicRulePayload)")
    known = {"sql", "description", "actions", "errorAction", "ruleDisabled", "awsIotSqlVersion"}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} in the rule; a TopicRulePayload has "
                             f"{', '.join(sorted(known))}")
    sql = payload.get("sql")
    if not isinstance(sql, str):
        raise InvalidRequest("the rule needs 'sql', e.g. SELECT * FROM 'dt/+/telemetry'")
    statement = parse(sql)
    description = payload.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(f"'description' must be a string of at most {MAX_DESCRIPTION} characters")
    version = payload.get("awsIotSqlVersion") or DEFAULT_SQL_VERSION
    if version not in SQL_VERSIONS:
        raise InvalidRequest(f"'awsIotSqlVersion' {version!r} is not one of {', '.join(SQL_VERSIONS)}")
    disabled = payload.get("ruleDisabled", False)
    if not isinstance(disabled, bool):
        raise InvalidRequest("'ruleDisabled' must be true or false")
    actions = payload.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InvalidRequest("the rule needs 'actions': a list of 1 to 10 actions, e.g. "
                             '[{"republish": {"topic": "out/${topic(2)}"}}]')
    if len(actions) > MAX_ACTIONS:
        raise InvalidRequest(f"the rule has {len(actions)} actions; AWS IoT allows at most {MAX_ACTIONS}")
    checked = [check_action(action, statement, fleet, f"actions[{i}]") for i, action in enumerate(actions)]
    error_action = payload.get("errorAction")
    if error_action is not None:
        error_action = check_action(error_action, statement, fleet, "errorAction")
    return {"ruleName": name, "sql": sql, "description": description, "actions": checked,
            "errorAction": error_action, "ruleDisabled": disabled, "awsIotSqlVersion": version,
            "createdAt": created_at_ms}


def action_kind(action: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The kind of a checked action and its fields."""
    (kind, fields), = action.items()
    return kind, fields


def check_action(action: Any, statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    if not isinstance(action, Mapping) or len(action) != 1:
        raise InvalidRequest(f"{where}: an action is an object with one key naming its kind, e.g. "
                             '{"republish": {"topic": "..."}}')
    (kind, fields), = action.items()
    check = ACTION_KINDS.get(kind)
    if check is None:
        raise InvalidRequest(f"{where}: unknown action {kind!r}; supported: {', '.join(sorted(ACTION_KINDS))}")
    if not isinstance(fields, Mapping):
        raise InvalidRequest(f"{where}: the fields of the {kind} action must be an object")
    if kind in fleet.missing_extras:
        raise InvalidRequest(f"{where}: the {kind} action needs boto3, which this region does not have: "
                             "install geofleet[aws] (pip install 'geofleet[aws]') and restart the region")
    return {kind: check(dict(fields), statement, fleet, f"{where}.{kind}")}


def _only(fields: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidRequest(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _topic_template(fields: dict[str, Any], name: str, where: str, required: bool) -> str | None:
    template = fields.get(name)
    if template is None and not required:
        return None
    if not isinstance(template, str) or not template:
        raise InvalidRequest(f"{where}: '{name}' (a topic, may use ${{topic(2)}}, ${{clientid()}}...) is required")
    check_template(template)
    problem = topic_name_problem(re.sub(r"\$\{[^}]*\}", "x", template))
    if problem is not None:
        raise InvalidRequest(f"{where}: '{name}' {template!r}: {problem}")
    return template


def _qos(fields: dict[str, Any], where: str) -> int:
    qos = fields.get("qos", 0)
    if qos not in (0, 1) or isinstance(qos, bool):
        raise InvalidRequest(f"{where}: 'qos' must be 0 or 1")
    return int(qos)


def _republish(fields: dict[str, Any], statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    _only(fields, {"topic", "qos", "roleArn", "headers"}, where)
    topic = _topic_template(fields, "topic", where, required=True)
    assert topic is not None
    if filters_overlap(_as_filter(topic), statement.topic_filter):
        raise InvalidRequest(f"{where}: republishing to {topic!r} would trigger this rule again (its FROM is "
                             f"{statement.topic_filter!r}); AWS IoT forbids such a loop: choose another topic")
    return {"topic": topic, "qos": _qos(fields, where)}


def _forward(fields: dict[str, Any], statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    _only(fields, {"region", "topic", "qos"}, where)
    region = fields.get("region")
    if not isinstance(region, str) or region not in fleet.regions:
        raise InvalidRequest(f"{where}: 'region' {region!r} is not a region of this fleet; "
                             f"regions: {', '.join(sorted(fleet.regions))}")
    if region == fleet.region:
        raise InvalidRequest(f"{where}: forwarding to {region}, the region that runs the rule: use republish")
    checked: dict[str, Any] = {"region": region, "qos": _qos(fields, where)}
    topic = _topic_template(fields, "topic", where, required=False)
    if (topic or statement.topic_filter).startswith("$"):
        raise InvalidRequest(f"{where}: a forward publishes in {region} on the topic it is given (default: the "
                             f"message's own); {topic or statement.topic_filter!r} is reserved: give a 'topic' "
                             "outside '$aws/'")
    if topic is not None:
        checked["topic"] = topic
    return checked


def _http(fields: dict[str, Any], statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    _only(fields, {"url", "headers", "confirmationUrl", "auth"}, where)
    url = fields.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url) or len(url) > MAX_URL:
        raise InvalidRequest(f"{where}: 'url' must be an http:// or https:// URL of at most {MAX_URL} characters")
    headers = fields.get("headers") or []
    if not isinstance(headers, list) or len(headers) > MAX_HEADERS or not all(
            isinstance(h, Mapping) and set(h) == {"key", "value"} and isinstance(h["key"], str)
            and isinstance(h["value"], str) and re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", h["key"])
            and "\n" not in h["value"] and "\r" not in h["value"] for h in headers):
        raise InvalidRequest(f"{where}: 'headers' must be a list of at most {MAX_HEADERS} "
                             '{"key": "...", "value": "..."} with valid header names and one-line values')
    return {"url": url, "headers": [{"key": h["key"], "value": h["value"]} for h in headers]}


SQS_QUEUE_URL = re.compile(
    r"^https://(?:sqs\.(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?"
    r"|(?P<legacy>[a-z]{2}(?:-[a-z]+)+-\d+)\.queue\.amazonaws\.com(?:\.cn)?"
    r"|(?P<global>queue)\.amazonaws\.com)"
    r"/(?P<account>\d{12})/(?P<name>[A-Za-z0-9_-]{1,80}(?:\.fifo)?)$")
"""An SQS queue URL as AWS gives it (``https://sqs.us-east-1.amazonaws.com/123456789012/name``,
or the legacy ``us-east-1.queue.amazonaws.com`` / ``queue.amazonaws.com`` = us-east-1 forms)."""
SNS_TOPIC_ARN = re.compile(r"^arn:(?:aws|aws-cn|aws-us-gov):sns:(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+):"
                           r"(?P<account>\d{12}):(?P<name>[A-Za-z0-9_-]{1,256}(?:\.fifo)?)$")
SNS_MESSAGE_FORMATS = ("RAW", "JSON")


def sqs_queue_region(url: object) -> str:
    """The AWS region of queue ``url`` (its client is made for that region, as AWS IoT does: the
    queue need not be in the rule's region); ``InvalidRequest`` if it is not a queue URL."""
    match = SQS_QUEUE_URL.match(url) if isinstance(url, str) else None
    if match is None:
        raise InvalidRequest(f"'queueUrl' {url!r} is not an SQS queue URL; expected "
                             "https://sqs.<region>.amazonaws.com/<12-digit account>/<queue name>")
    return match["region"] or match["legacy"] or "us-east-1"


def sns_topic_region(arn: object) -> str:
    """The AWS region of SNS topic ``arn``; ``InvalidRequest`` if it is not a topic ARN."""
    match = SNS_TOPIC_ARN.match(arn) if isinstance(arn, str) else None
    if match is None:
        raise InvalidRequest(f"'targetArn' {arn!r} is not an SNS topic ARN; expected "
                             "arn:aws:sns:<region>:<12-digit account>:<topic name>")
    return match["region"]


def _role_arn(fields: dict[str, Any], where: str) -> None:
    role = fields.get("roleArn")
    if role is not None and (not isinstance(role, str) or not re.match(r"^arn:[a-z-]+:iam::\d{12}:role/", role)):
        raise InvalidRequest(f"{where}: 'roleArn' {role!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")


def _sqs(fields: dict[str, Any], statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    """AWS's SqsAction. ``roleArn`` is kept (the same rule can go to AWS) but not used by the node,
    which sends with its own credentials (the standard boto3 chain)."""
    _only(fields, {"queueUrl", "useBase64", "roleArn"}, where)
    url = fields.get("queueUrl")
    if isinstance(url, str) and "${" in url:
        raise InvalidRequest(f"{where}: 'queueUrl' with a substitution template is not supported on the region "
                             "node (the queue's region must be known when the rule is created): give a fixed URL")
    try:
        sqs_queue_region(url)
    except InvalidRequest as error:
        raise InvalidRequest(f"{where}: {error.message}") from None
    assert isinstance(url, str)
    if url.endswith(".fifo"):
        raise InvalidRequest(f"{where}: 'queueUrl' {url!r} is a FIFO queue; AWS IoT's SQS action does not support "
                             "FIFO queues (no order is guaranteed): use a standard queue")
    use_base64 = fields.get("useBase64", False)
    if not isinstance(use_base64, bool):
        raise InvalidRequest(f"{where}: 'useBase64' must be true or false")
    _role_arn(fields, where)
    checked: dict[str, Any] = {"queueUrl": url, "useBase64": use_base64}
    if fields.get("roleArn") is not None:
        checked["roleArn"] = fields["roleArn"]
    return checked


def _sns(fields: dict[str, Any], statement: Statement, fleet: FleetContext, where: str) -> dict[str, Any]:
    """AWS's SnsAction (``roleArn`` kept, not used on the node, as for sqs)."""
    _only(fields, {"targetArn", "messageFormat", "roleArn"}, where)
    arn = fields.get("targetArn")
    try:
        sns_topic_region(arn)
    except InvalidRequest as error:
        raise InvalidRequest(f"{where}: {error.message}") from None
    assert isinstance(arn, str)
    if arn.endswith(".fifo"):
        raise InvalidRequest(f"{where}: 'targetArn' {arn!r} is a FIFO topic; the SNS action needs a standard topic")
    message_format = fields.get("messageFormat", "RAW")
    if message_format not in SNS_MESSAGE_FORMATS:
        raise InvalidRequest(f"{where}: 'messageFormat' {message_format!r} is not one of "
                             f"{', '.join(SNS_MESSAGE_FORMATS)}")
    _role_arn(fields, where)
    checked: dict[str, Any] = {"targetArn": arn, "messageFormat": message_format}
    if fields.get("roleArn") is not None:
        checked["roleArn"] = fields["roleArn"]
    return checked


ActionCheck = Callable[[dict[str, Any], Statement, FleetContext, str], dict[str, Any]]
ACTION_KINDS: dict[str, ActionCheck] = {"republish": _republish, "forward": _forward, "http": _http,
                                        "sqs": _sqs, "sns": _sns}
"""Every action kind a rule may use, with the check of its fields."""


def _as_filter(template: str) -> str:
    """A topic template as the filter of every topic it can produce (a substituted level is any level)."""
    return "/".join("+" if "${" in level else level for level in template.split("/"))


def filters_overlap(left: str, right: str) -> bool:
    """Whether some topic matches both filters."""
    a, b = left.split("/"), right.split("/")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and "+" not in (x, y):
            return False
    return True


def error_payload(rule: str, topic: str, client_id: str, original: bytes,
                  failures: list[dict[str, str]]) -> dict[str, Any]:
    """AWS IoT's error-action message: what failed, for which message."""
    return {"ruleName": rule, "topic": topic, "clientId": client_id,
            "base64OriginalPayload": base64.b64encode(original).decode(), "failures": failures}


def failure(kind: str, resource: str, message: str) -> dict[str, str]:
    return {"failedAction": FAILED_ACTION_NAMES.get(kind, f"{kind.capitalize()}Action"),
            "failedResource": resource, "errorMessage": message}
