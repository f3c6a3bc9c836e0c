"""Recognising a message seen a moment ago.

QoS 1 is at-least-once: a message resent after a failover may arrive twice (at the device from
two sessions, at the application from two regions). Both ends drop a message whose topic and
payload they saw recently, within a time window and a count; a device that means to send the
same thing twice puts a sequence number or timestamp in it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


class RecentMessages:
    def __init__(self, limit: int, window_s: float | None = None) -> None:
        """Remember at most ``limit`` messages, each for ``window_s`` seconds (None: no time limit)."""
        self._limit = limit
        self._window_s = window_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first_time(self, topic: str, payload: bytes, now: float) -> bool:
        """Whether this (topic, payload) was not seen recently; remembers it. ``now`` in seconds
        on any monotonic clock."""
        horizon = None if self._window_s is None else now - self._window_s
        while self._seen and (len(self._seen) >= self._limit
                              or (horizon is not None and next(iter(self._seen.values())) < horizon)):
            self._seen.popitem(last=False)
        key = hashlib.blake2b(topic.encode() + b"\0" + payload, digest_size=16).digest()
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
