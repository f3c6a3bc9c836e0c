"""AWS IoT Core's MQTT limits, and the checks that apply them.

Without them one device can make the broker route and retain 10 MB messages, or fill the policy
cache and the topic index with 65 KB topics of 30,000 levels. The numbers are AWS IoT Core's
message-broker quotas (hard limits), so a device that works against AWS works here too:

- payload of a PUBLISH (and of a Last Will): at most 128 KB;
- topic name or topic filter: at most 256 bytes of UTF-8, and at most 7 forward slashes; for
  Basic Ingest topics (``$aws/rules/<rule>/...``) the reserved prefix counts for neither;
- client id: at most 128 bytes of UTF-8.

A topic *name* (what a PUBLISH or a will carries) must also be a valid MQTT topic: not empty,
no ``+`` or ``#``, no U+0000 [MQTT-4.7.3-1, 3.3.2-2, 1.5.3-2].
"""

from __future__ import annotations

MAX_PAYLOAD_BYTES = 128 * 1024
MAX_TOPIC_BYTES = 256
MAX_TOPIC_SLASHES = 7
MAX_CLIENT_ID_BYTES = 128
MAX_PACKET_BYTES = MAX_PAYLOAD_BYTES + 2 + MAX_TOPIC_BYTES + 2
"""The largest MQTT packet worth reading: a PUBLISH with the largest payload and topic (the
topic length field and the packet id add 2 bytes each). A CONNECT carrying a will of the
largest size fits too (its other fields are bounded far below the topic allowance)."""

_BASIC_INGEST = "$aws/rules/"


def _counted(topic: str) -> str:
    """The part of a topic the size and slash limits apply to."""
    if topic.startswith(_BASIC_INGEST):
        rule_end = topic.find("/", len(_BASIC_INGEST))
        return "" if rule_end < 0 else topic[rule_end + 1:]
    return topic


def topic_filter_problem(topic_filter: str) -> str | None:
    """Why AWS IoT would refuse this topic filter (or topic) on size, or None."""
    counted = _counted(topic_filter)
    size = len(counted.encode())
    if size > MAX_TOPIC_BYTES:
        return f"topic is {size} bytes; AWS IoT allows at most {MAX_TOPIC_BYTES}"
    slashes = counted.count("/")
    if slashes > MAX_TOPIC_SLASHES:
        return f"topic has {slashes} '/'; AWS IoT allows at most {MAX_TOPIC_SLASHES}"
    return None


def topic_name_problem(topic: str) -> str | None:
    """Why this topic may not be published to (by a PUBLISH or a Last Will), or None."""
    if not topic:
        return "topic is empty [MQTT-4.7.3-1]"
    if "+" in topic or "#" in topic:
        return "a topic name may not contain the wildcards '+' or '#' [MQTT-3.3.2-2]"
    if "\x00" in topic:
        return "a topic may not contain U+0000 [MQTT-4.7.3-2]"
    return topic_filter_problem(topic)


def payload_problem(payload: bytes | bytearray) -> str | None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return f"payload is {len(payload)} bytes; AWS IoT allows at most {MAX_PAYLOAD_BYTES}"
    return None


def client_id_problem(client_id: str) -> str | None:
    if not client_id:
        return "client id is empty"
    size = len(client_id.encode())
    if size > MAX_CLIENT_ID_BYTES:
        return f"client id is {size} bytes; AWS IoT allows at most {MAX_CLIENT_ID_BYTES}"
    return None
