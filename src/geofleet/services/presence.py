"""The region's part of the global presence directory.

The gate tells it about every connect and disconnect; it records this region's sessions with
the fencing rules of ``domain.presence`` and lets replication carry them to every region. When
an entry from another region shows a device connected there *after* a session still open
here, this region closes its own, older session (``close_duplicates``), so a device is never
served by two regions at once for long.
"""

from __future__ import annotations

import asyncio
import logging

from geofleet.broker.base import Broker, Connection, DisconnectReason
from geofleet.domain.hlc import Clock
from geofleet.domain.presence import (
    Session,
    Whereabouts,
    entry_key,
    is_superseded,
    locate,
    on_connect,
    on_disconnect,
)
from geofleet.domain.records import Kind, Record
from geofleet.services.ledger import Ledger
from geofleet.store.base import Store

log = logging.getLogger(__name__)


class PresenceDirectory:
    def __init__(self, store: Store, ledger: Ledger, clock: Clock, region: str, broker: Broker, *,
                 close_duplicates: bool = True) -> None:
        self._store = store
        self._ledger = ledger
        self._broker = broker
        self._clock = clock
        self._region = region
        self._close_duplicates = close_duplicates
        self._tasks: set[asyncio.Task[None]] = set()
        ledger.observe(self._changed)

    def sessions(self, device: str) -> list[Session]:
        return [Session.from_json(r.body) for r in self._store.records(Kind.PRESENCE, ref=device) if r.body]

    def whereabouts(self, device: str, down: frozenset[str] = frozenset()) -> Whereabouts:
        return locate(device, self.sessions(device), down)

    def connected_devices(self, region: str | None = None, down: frozenset[str] = frozenset()) -> list[Session]:
        """Every device's current session (optionally only those in ``region``); sessions in
        ``down`` regions do not count."""
        by_device: dict[str, list[Session]] = {}
        for record in self._store.records(Kind.PRESENCE):
            if record.body and record.body.get("connected"):
                session = Session.from_json(record.body)
                by_device.setdefault(session.device, []).append(session)
        current = [locate(device, sessions, down).current for device, sessions in by_device.items()]
        return [s for s in current if s is not None and (region is None or s.region == region)]

    # -- lifecycle, from the gate ----------------------------------------------------------

    def connected(self, connection: Connection) -> None:
        session = Session(connection.client_id, self._region, connection.session_id, self._clock.now(), True,
                          connection.ip)
        if self._write(on_connect(self._own(connection.client_id), session)) and \
                is_superseded(session, self.sessions(connection.client_id)):
            self._close(session)  # a newer session elsewhere already arrived: this one is stale

    def disconnected(self, connection: Connection) -> None:
        reason = connection.reason.value if connection.reason else DisconnectReason.CONNECTION_LOST.value
        self._write(on_disconnect(self._own(connection.client_id), connection.session_id, self._clock.now(), reason))

    def forget_own_sessions(self) -> int:
        """At start-up: sessions recorded as connected here died with the previous process."""
        ended = 0
        for record in self._store.records(Kind.PRESENCE):
            if record.origin == self._region and record.body and record.body.get("connected"):
                session = Session.from_json(record.body)
                ended += self._write(on_disconnect(session, session.session_id, self._clock.now(),
                                                   "SERVER_RESTARTED"))
        return ended

    # -- internals -------------------------------------------------------------------------

    def _own(self, device: str) -> Session | None:
        record = self._store.get(Kind.PRESENCE, entry_key(device, self._region))
        return Session.from_json(record.body) if record is not None and record.body else None

    def _write(self, session: Session | None) -> bool:
        if session is None:
            return False
        self._ledger.put(Kind.PRESENCE, entry_key(session.device, self._region), session.to_json(),
                                 ref=session.device)
        return True

    def _changed(self, _previous: Record | None, record: Record) -> None:
        if record.kind is not Kind.PRESENCE or record.origin == self._region or not record.body \
                or not record.body.get("connected") or not self._close_duplicates:
            return
        mine = self._own(str(record.body["device"]))
        if mine is not None and mine.connected and is_superseded(mine, [Session.from_json(record.body)]):
            self._close(mine)

    def _close(self, session: Session) -> None:
        if not self._close_duplicates:
            return
        broker = self._broker
        log.info("device %s connected in another region since session %s here: closing it", session.device,
                 session.session_id)

        async def close() -> None:
            await broker.disconnect(lambda c: c.client_id == session.device and c.session_id == session.session_id,
                                    DisconnectReason.DUPLICATE_CLIENTID)

        task = asyncio.ensure_future(close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
