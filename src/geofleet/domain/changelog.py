"""How far a region may truncate its change log.

A region's log exists so that its peers can pull what it wrote. Once every peer has pulled (and
durably applied: a peer asks ``after=N`` only once its cursor is N) a prefix, that prefix serves
nobody. A peer that stays away longer than the retention does not hold the log forever: the
expired prefix goes too, and that peer, told on its return that its cursor is before the log's
start, catches up by anti-entropy instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def truncation_point(head: int, acknowledged: Mapping[str, int], peers: Iterable[str], expired_through: int) -> int:
    """The highest sequence number that may be deleted: everything every peer has acknowledged
    (a peer not heard from since this process started has acknowledged nothing), or everything
    older than the retention, whichever is further; never past ``head``."""
    acked = min((acknowledged.get(peer, 0) for peer in peers), default=head)
    return max(0, min(head, max(acked, expired_through)))
