"""Where a device keeps the QoS 1 messages it has not yet had acknowledged.

A message stays in the outbox from ``publish`` until a broker's PUBACK, across disconnects and
failovers: after a reconnect, anywhere, the outbox is sent again in order. The outbox is
bounded; when full, ``publish`` fails with ``OutboxFull`` instead of silently dropping old
messages, so the device program decides what to give up. ``DiskOutbox`` (a SQLite file) also
survives a restart of the device program.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from geofleet.domain.errors import GeofleetError

DEFAULT_LIMIT = 10_000


class OutboxFull(GeofleetError):
    """``publish`` at QoS 1 found the outbox at its limit: the program decides what to give up.

    Example::

        try:
            await device.publish(topic, reading)
        except OutboxFull:
            log.warning("offline too long: reading dropped")
    """

    status = 507
    code = "OutboxFull"


@dataclass(frozen=True, slots=True)
class Pending:
    id: int
    topic: str
    payload: bytes


class Outbox(Protocol):
    def put(self, topic: str, payload: bytes) -> int: ...

    def pending(self, limit: int = 100) -> list[Pending]:
        """The oldest unacknowledged messages, oldest first."""
        ...

    def ack(self, message_id: int) -> None: ...

    def __len__(self) -> int: ...


class MemoryOutbox:
    """The default outbox: in memory, bounded, lost with the process."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._items: OrderedDict[int, Pending] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def put(self, topic: str, payload: bytes) -> int:
        with self._lock:
            if len(self._items) >= self._limit:
                raise OutboxFull(f"{self._limit} messages await acknowledgement: the outbox is full")
            message = Pending(next(self._ids), topic, payload)
            self._items[message.id] = message
            return message.id

    def pending(self, limit: int = 100) -> list[Pending]:
        with self._lock:
            return list(itertools.islice(self._items.values(), limit))

    def ack(self, message_id: int) -> None:
        with self._lock:
            self._items.pop(message_id, None)

    def __len__(self) -> int:
        return len(self._items)


class DiskOutbox:
    """An outbox in a SQLite file: unacknowledged QoS 1 messages survive a restart of the program.

    Example::

        async with DeviceClient.from_credentials(credentials, outbox=DiskOutbox("outbox.db")) as device: ...
    """

    def __init__(self, path: Path | str, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "topic TEXT NOT NULL, payload BLOB NOT NULL)")
        self._count = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def put(self, topic: str, payload: bytes) -> int:
        with self._lock:
            if self._count >= self._limit:
                raise OutboxFull(f"{self._limit} messages await acknowledgement: the outbox is full")
            cursor = self._db.execute("INSERT INTO outbox (topic, payload) VALUES (?, ?)", (topic, payload))
            self._count += 1
            return int(cursor.lastrowid or 0)

    def pending(self, limit: int = 100) -> list[Pending]:
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload FROM outbox ORDER BY id LIMIT ?", (limit,))
            return [Pending(int(i), str(t), bytes(p)) for i, t, p in rows]

    def ack(self, message_id: int) -> None:
        with self._lock:
            if self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,)).rowcount:
                self._count -= 1

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        self._db.close()
