"""Hybrid logical clocks.

Replication orders concurrent writes from different regions by (HLC, region). A plain wall
clock would let a region with a fast clock win every conflict and would go backwards after an
NTP step; a pure Lamport counter loses any relation to real time. An HLC stays close to the
wall clock, never goes backwards, and moves past every timestamp it has seen.

Timestamps encode as fixed-width strings so that string order equals time order, which lets
SQLite compare and index them directly.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_LOGICAL_DIGITS = 6
_MAX_LOGICAL = 10**_LOGICAL_DIGITS - 1
_ENCODED = re.compile(r"[0-9]{13}\.[0-9]{6}", re.ASCII)


@dataclass(frozen=True, order=True, slots=True)
class HLC:
    """A point in hybrid logical time: wall-clock milliseconds plus a logical counter."""

    wall_ms: int
    logical: int = 0

    def encode(self) -> str:
        return f"{self.wall_ms:013d}.{self.logical:0{_LOGICAL_DIGITS}d}"

    @classmethod
    def decode(cls, text: str) -> HLC:
        if not isinstance(text, str) or _ENCODED.fullmatch(text) is None:
            raise ValueError(f"not an HLC timestamp: {text!r}")
        wall, logical = text.split(".")
        return cls(int(wall), int(logical))

    def __str__(self) -> str:
        return self.encode()


ZERO = HLC(0, 0)


class Clock:
    """A thread-safe HLC source for one region.

    ``now()`` stamps a local event; ``observe()`` folds in a timestamp received from another
    region so that anything stamped afterwards sorts after it.
    """

    def __init__(self, wall_ms: Callable[[], int] | None = None, start: HLC = ZERO) -> None:
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = start
        self._lock = threading.Lock()

    @property
    def last(self) -> HLC:
        return self._last

    def now(self) -> HLC:
        with self._lock:
            wall = self._wall_ms()
            if wall > self._last.wall_ms:
                self._last = HLC(wall, 0)
            else:
                self._last = self._bump(self._last)
            return self._last

    def observe(self, remote: HLC) -> HLC:
        with self._lock:
            wall = self._wall_ms()
            top = max(wall, self._last.wall_ms, remote.wall_ms)
            if top == self._last.wall_ms == remote.wall_ms:
                logical = max(self._last.logical, remote.logical) + 1
            elif top == self._last.wall_ms:
                logical = self._last.logical + 1
            elif top == remote.wall_ms:
                logical = remote.logical + 1
            else:
                logical = 0
            self._last = HLC(top, logical) if logical <= _MAX_LOGICAL else HLC(top + 1, 0)
            return self._last

    @staticmethod
    def _bump(stamp: HLC) -> HLC:
        if stamp.logical >= _MAX_LOGICAL:
            return HLC(stamp.wall_ms + 1, 0)
        return HLC(stamp.wall_ms, stamp.logical + 1)
