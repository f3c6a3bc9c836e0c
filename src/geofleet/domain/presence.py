"""The presence directory's rules: where a device is connected, fenced by session.

Each region keeps one presence entry per device for *its own* sessions, keyed
``<device>|<region>``, and is the only writer of that key; the entries replicate like any
record. Because no two regions ever write the same key, replication has no conflicts to
resolve here, and a region's late or repeated lifecycle events can only touch its own entry:

- a connect replaces the entry only if it is newer (by connect HLC) than the session there;
- a disconnect clears the entry only if it names the session there, so the late disconnect
  of an old session never clears a newer one (fencing);
- the device's location is its connected session with the newest connect stamp, in any region;
  any other connected session is a duplicate, and by policy the region holding it closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from geofleet.domain.hlc import HLC


@dataclass(frozen=True, slots=True)
class Session:
    """One region's view of a device's latest session there."""

    device: str
    region: str
    session_id: str
    connected_at: HLC
    """Stamp of the CONNECT; orders sessions across regions."""
    connected: bool
    ip: str = ""
    disconnected_at: HLC | None = None
    disconnect_reason: str | None = None

    @property
    def order(self) -> tuple[HLC, str, str]:
        return (self.connected_at, self.region, self.session_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device, "region": self.region, "sessionId": self.session_id,
            "connectedAt": self.connected_at.encode(), "connected": self.connected, "ipAddress": self.ip,
            "disconnectedAt": self.disconnected_at.encode() if self.disconnected_at else None,
            "disconnectReason": self.disconnect_reason,
        }

    def to_view(self) -> dict[str, Any]:
        """The session as the HTTP API shows it: ``to_json`` (the replicated record) with its
        times in ISO 8601 UTC instead of HLC stamps, which only replication needs to read."""
        return {**self.to_json(), "connectedAt": iso_time(self.connected_at),
                "disconnectedAt": iso_time(self.disconnected_at) if self.disconnected_at else None}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Session:
        gone = body.get("disconnectedAt")
        return cls(
            device=str(body["device"]), region=str(body["region"]), session_id=str(body["sessionId"]),
            connected_at=HLC.decode(body["connectedAt"]), connected=bool(body["connected"]),
            ip=str(body.get("ipAddress") or ""), disconnected_at=HLC.decode(gone) if gone else None,
            disconnect_reason=body.get("disconnectReason"),
        )


def iso_time(stamp: HLC) -> str:
    """An HLC's wall clock as ISO 8601 UTC with milliseconds (``2026-12-01T05:33:57.123Z``)."""
    moment = datetime.fromtimestamp(stamp.wall_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_key(device: str, region: str) -> str:
    return f"{device}|{region}"


def on_connect(current: Session | None, session: Session) -> Session | None:
    """The entry after a connect event; None when the event changes nothing (a duplicate, or a
    connect older than the session already recorded)."""
    if current is not None and current.order >= session.order:
        return None
    return session


def on_disconnect(current: Session | None, session_id: str, at: HLC, reason: str | None) -> Session | None:
    """The entry after a disconnect event; None unless it ends the session recorded there."""
    if current is None or not current.connected or current.session_id != session_id:
        return None
    return Session(current.device, current.region, current.session_id, current.connected_at, False,
                   current.ip, at, reason)


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """Where a device is, as far as the directory knows."""

    device: str
    current: Session | None
    """The connected session with the newest connect, or None when the device is offline."""
    last: Session | None
    """The most recent session of any state (for 'last seen' when offline)."""
    duplicates: tuple[Session, ...]
    """Other sessions still marked connected: older ones, to be closed."""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "connected": self.current is not None,
            "region": self.current.region if self.current else None,
            "sessionId": self.current.session_id if self.current else None,
            "connectedAt": iso_time(self.current.connected_at) if self.current else None,
            "lastSeen": self.last.to_view() if self.last else None,
            "duplicates": [s.to_view() for s in self.duplicates],
        }


def locate(device: str, sessions: list[Session], down: frozenset[str] = frozenset()) -> Whereabouts:
    """``down``: regions known to be down right now, whose 'connected' entries are stale (the
    region died with the session open; it ends them when it starts again)."""
    live = sorted((s for s in sessions if s.connected and s.region not in down), key=lambda s: s.order,
                  reverse=True)
    last = max(sessions, key=lambda s: (s.disconnected_at or s.connected_at, s.region), default=None)
    return Whereabouts(device, live[0] if live else None, last, tuple(live[1:]))


def is_superseded(local: Session, sessions: list[Session]) -> bool:
    """Whether a session held here is older than a connected session of the same device
    elsewhere: the device has moved on, and this session is the duplicate to close."""
    return any(s.connected and s.region != local.region and s.order > local.order for s in sessions)
