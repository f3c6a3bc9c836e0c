"""Durable application consumers: their names and filters, the journal entries they read, and
the bounds of both.

A consumer is a registry record (``Kind.CONSUMER``) replicated like any other, so every region
knows which topics to keep for it. What a consumer reads is each region's *journal*: the device
publishes that region accepted and that matched some consumer's filters, numbered by a
per-region sequence. The journal is local to its region (an acknowledged message is in the
journal of the region that acknowledged it, and only there), so a consumer reads every region
and keeps one offset per region, stored in that region.

Everything here is pure: the services and routes apply these rules, the SDK reads the entries.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from geofleet.domain.errors import InvalidRequest
from geofleet.domain.json_types import Json
from geofleet.domain.limits import topic_filter_problem
from geofleet.domain.topics import TopicFilterIndex

# AWS's rule for names of IoT resources that appear in ARNs (thing names, rule names with '-'),
# anchored with \A and \Z so that "name\n" does not pass.
_CONSUMER_NAME = re.compile(r"\A[a-zA-Z0-9:_-]{1,128}\Z")

MAX_FILTERS = 8
"""Topic filters one consumer may have: each is matched against every accepted publish, so the
journal's cost per message is bounded by (consumers x 8) trie walks at worst."""
MAX_CONSUMERS = 100
"""Consumers in the fleet: every region keeps (and matches) the filters of every one."""

READ_LIMIT_DEFAULT = 100
READ_LIMIT_MAX = 1000
"""Entries one read returns at most."""
READ_BYTES_MAX = 4 * 1024 * 1024
"""Payload bytes one read returns at most (at least one entry, even a 128 KB one)."""
READ_SCAN_MAX = 10_000
"""Journal rows one read looks at: a consumer whose filters match little of the journal still
advances (``next``) without a request scanning the whole table."""
WAIT_DEFAULT_S = 10.0
WAIT_MAX_S = 20.0
"""A read with nothing to return waits (long poll) at most this long; below the SDK's and
proxies' read timeouts."""

RETENTION_S = 24 * 3600
"""Journal entries older than this are dropped (counted, and reported to a reader that had not
reached them): a consumer away for longer than a day loses what it did not read."""
RETENTION_ROWS = 1_000_000
"""Journal entries a region keeps at most (oldest dropped first)."""
RETENTION_BYTES = 1024**3
"""Payload bytes a region's journal keeps at most (oldest dropped first): a million 128 KB
payloads would be 128 GB; 1 GiB is a day of ~12 messages/s of 1 KB, or ~8,000 of the largest."""


def check_consumer_name(name: str) -> str:
    if not _CONSUMER_NAME.match(name):
        raise InvalidRequest(
            f"invalid consumer name {name!r}: use 1-128 characters from a-z, A-Z, 0-9, ':', '_' and '-'")
    return name


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT topic filter within AWS IoT's limits, or None."""
    if not topic_filter:
        return "a topic filter may not be empty [MQTT-4.7.3-1]"
    if "\x00" in topic_filter:
        return "a topic filter may not contain U+0000 [MQTT-4.7.3-2]"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one [MQTT-4.7.1-2]"
        if "+" in level and level != "+":
            return "'+' must be a whole level [MQTT-4.7.1-3]"
    return topic_filter_problem(topic_filter)


def check_filters(filters: Any) -> list[str]:
    """The consumer's filters, checked and without repeats (order kept)."""
    if not isinstance(filters, list) or not filters or not all(isinstance(f, str) for f in filters):
        raise InvalidRequest(f"filters must be a list of 1-{MAX_FILTERS} MQTT topic filters (strings)")
    unique = list(dict.fromkeys(filters))
    if len(unique) > MAX_FILTERS:
        raise InvalidRequest(f"a consumer has at most {MAX_FILTERS} topic filters; {len(unique)} given")
    for topic_filter in unique:
        problem = filter_problem(topic_filter)
        if problem is not None:
            raise InvalidRequest(f"invalid topic filter {topic_filter!r}: {problem}")
    return unique


def consumer_body(name: str, filters: Sequence[str], created_ms: int) -> Json:
    """The record body of a consumer (``createdAt`` in epoch milliseconds, kept on updates)."""
    return {"consumerName": name, "filters": list(filters), "createdAt": created_ms}


def check_read(after: int, limit: int, wait_s: float) -> None:
    if after < 0:
        raise InvalidRequest("after must be a journal sequence number >= 0")
    if not 1 <= limit <= READ_LIMIT_MAX:
        raise InvalidRequest(f"limit must be 1-{READ_LIMIT_MAX}")
    if not 0 <= wait_s <= WAIT_MAX_S:
        raise InvalidRequest(f"wait must be 0-{WAIT_MAX_S:g} seconds")


class FilterSet:
    """Topic filters, matched in one trie walk per message (``domain/topics.py``)."""

    def __init__(self, filters: Iterable[str]) -> None:
        self._index = TopicFilterIndex()
        for topic_filter in filters:
            self._index.add(topic_filter)

    def __bool__(self) -> bool:
        return len(self._index) > 0

    def matches(self, topic: str) -> bool:
        return bool(self._index.match(topic))

    @classmethod
    def of_consumers(cls, bodies: Iterable[Mapping[str, Any]]) -> FilterSet:
        """Every filter of every consumer: what a region journals."""
        return cls(f for body in bodies for f in body.get("filters") or ())


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One device publish a region accepted and journaled (what a durable consumer yields).

    Example::

        async with app.consumer("billing", filters=["dt/+/usage"]) as consumer:
            async for message in consumer:
                print(message.id, message.client_id, message.topic, message.json())
    """

    region: str
    seq: int
    topic: str
    client_id: str
    timestamp_ms: int
    payload: bytes

    @property
    def id(self) -> str:
        """Unique in the fleet: the region and its sequence number."""
        return f"{self.region}:{self.seq}"

    def json(self) -> Any:
        """The payload, parsed as JSON."""
        return json.loads(self.payload)

    def to_json(self) -> Json:
        """The wire form: the payload as text when it is UTF-8 (JSON payloads stay readable),
        else base64, as the live stream does."""
        item: Json = {"id": self.id, "region": self.region, "seq": self.seq, "topic": self.topic,
                      "clientId": self.client_id, "timestamp": self.timestamp_ms}
        try:
            item["payload"] = self.payload.decode()
        except UnicodeDecodeError:
            item["payloadBase64"] = base64.b64encode(self.payload).decode()
        return item

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> JournalEntry:
        payload = item["payload"].encode() if "payload" in item else base64.b64decode(item["payloadBase64"])
        return cls(str(item["region"]), int(item["seq"]), str(item["topic"]), str(item["clientId"]),
                   int(item["timestamp"]), payload)


@dataclass(frozen=True, slots=True)
class ReadPage:
    """What one read of a region's journal answers: the matching entries, the position to read
    on from (``next``: the last row looked at, matching or not), and ``dropped``, the entries
    the reader had not reached that retention removed (never silent)."""

    entries: list[JournalEntry]
    next: int
    head: int
    dropped: int

    def to_json(self) -> Json:
        return {"messages": [e.to_json() for e in self.entries], "next": self.next, "head": self.head,
                "dropped": self.dropped}


def select(rows: Iterable[JournalEntry], filters: FilterSet, limit: int, max_bytes: int = READ_BYTES_MAX
           ) -> tuple[list[JournalEntry], int | None]:
    """The entries of ``rows`` (in sequence order) that match, at most ``limit`` and about
    ``max_bytes`` of payload; and the sequence of the last row taken into account (None: none),
    so a reader's position moves past rows that did not match."""
    chosen: list[JournalEntry] = []
    size = 0
    last: int | None = None
    for entry in rows:
        if filters.matches(entry.topic):
            if chosen and (len(chosen) >= limit or size + len(entry.payload) > max_bytes):
                break
            chosen.append(entry)
            size += len(entry.payload)
        last = entry.seq
    return chosen, last
