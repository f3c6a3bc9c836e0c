"""The provision-once guard's claim rule, with no storage: what a claim of a device id by a
CSR (its fingerprint) finds, given what the owner region holds for that id.

The store only reads and persists the entry inside one transaction; the rule is here so that
every backend (SQLite here, a conditional write in DynamoDB later) decides alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_STALE_MS = 30_000
"""A claim with no answer after this long was abandoned (its region died mid-provisioning)."""


@dataclass(frozen=True, slots=True)
class GuardEntry:
    """What the owner region holds for one device id."""

    fingerprint: str
    answer: dict[str, Any] | None
    claimed_ms: int


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """``state`` is ``claimed`` (the caller now holds the id: persist ``GuardEntry(fingerprint,
    None, now)``), ``done`` (this CSR was provisioned already: ``detail`` is the answer),
    ``busy`` (another claim with this CSR is in progress) or ``taken`` (the id belongs to
    another CSR: ``detail`` names its fingerprint and certificate)."""

    state: str
    detail: Any = None

    @property
    def claimed(self) -> bool:
        return self.state == "claimed"


def claim(entry: GuardEntry | None, fingerprint: str, now_ms: int, stale_ms: int = DEFAULT_STALE_MS) -> ClaimOutcome:
    """Claim a device id for a CSR: the first claim wins, and so does one that takes over a
    claim abandoned (no answer) for more than ``stale_ms``.

    >>> claim(None, "f1", now_ms=1000).state
    'claimed'
    >>> claim(GuardEntry("f1", {"certificateId": "c"}, 0), "f2", now_ms=1000).state
    'taken'
    """
    if entry is None or (entry.answer is None and now_ms - entry.claimed_ms > stale_ms):
        return ClaimOutcome("claimed")
    if entry.fingerprint != fingerprint:
        previous = entry.answer.get("certificateId") if entry.answer is not None else None
        return ClaimOutcome("taken", {"fingerprint": entry.fingerprint, "certificateId": previous})
    return ClaimOutcome("done", entry.answer) if entry.answer is not None else ClaimOutcome("busy")
