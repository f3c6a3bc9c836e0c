"""The region's journal of device publishes for durable consumers, and their offsets: SQLite.

A file of its own (``journal.db``), not a table of ``store.db``: the journal is an append-only,
high-volume log that is never replicated, and keeping it apart keeps its writes and WAL
checkpoints out of the registry's write lock and its pruning out of the registry's backups.

Same durability as the store: WAL with ``synchronous=NORMAL``, so an append is in the WAL file
the moment ``append`` returns and survives a SIGKILL of the process; the broker sends the
device's PUBACK only after that. ``seq`` is an AUTOINCREMENT key: never reused, also after the
oldest entries are pruned, so a consumer's offset always means the same position.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Generator
from pathlib import Path

from geofleet.domain.consumers import JournalEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL, client_id TEXT NOT NULL, timestamp_ms INTEGER NOT NULL, payload BLOB NOT NULL,
    total_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (
    consumer TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1), dropped INTEGER NOT NULL
);
INSERT OR IGNORE INTO journal_meta (id, dropped) VALUES (1, 0);
"""


class SqliteJournal:
    def __init__(self, path: Path | str, region: str) -> None:
        if str(path) != ":memory:":
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # payloads are devices' data: 0600
        self.region = region
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT total_bytes FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        self._total = int(row[0]) if row else 0
        """Payload bytes ever appended (as of the newest entry held): ``total_bytes`` of a row is
        this running sum, so the bytes held from a row on are a difference, never a scan."""

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    # -- the journal -----------------------------------------------------------------------

    def append(self, topic: str, client_id: str, timestamp_ms: int, payload: bytes) -> int:
        """Journal one message (committed when this returns); its sequence number."""
        total = self._total + len(payload)
        cursor = self._db.execute(
            "INSERT INTO journal (topic, client_id, timestamp_ms, payload, total_bytes) VALUES (?, ?, ?, ?, ?)",
            (topic, client_id, timestamp_ms, payload, total))
        self._total = total
        return int(cursor.lastrowid or 0)

    def entries(self, after: int, limit: int) -> Generator[JournalEntry]:
        """Up to ``limit`` entries after ``after``, in sequence order, read as they are taken (a
        reader that stops early has not loaded the rest: 10,000 rows may hold 1.3 GB)."""
        cursor = self._db.execute(
            "SELECT seq, topic, client_id, timestamp_ms, payload FROM journal WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit))
        try:
            while rows := cursor.fetchmany(64):
                for seq, topic, client, ts, payload in rows:
                    yield JournalEntry(self.region, seq, topic, client, ts, bytes(payload))
        finally:
            cursor.close()  # ends the statement's read snapshot now, not when collected

    def head(self) -> int:
        """The last sequence number ever given (0: none)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'").fetchone()
        return int(row[0]) if row else 0

    def first(self) -> int:
        """The oldest sequence number still held (head + 1 when the journal is empty)."""
        row = self._db.execute("SELECT min(seq) FROM journal").fetchone()
        return int(row[0]) if row[0] is not None else self.head() + 1

    def size(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM journal").fetchone()[0])

    def held_bytes(self) -> int:
        """Payload bytes of the entries held."""
        row = self._db.execute("SELECT total_bytes - length(payload) FROM journal ORDER BY seq LIMIT 1").fetchone()
        return self._total - int(row[0]) if row else 0

    def prune(self, older_than_ms: int, keep_rows: int, keep_bytes: int) -> int:
        """Drop the entries older than ``older_than_ms``, all but the newest ``keep_rows`` and
        the oldest beyond ``keep_bytes`` of payload, oldest first; count them as dropped;
        returns how many went."""
        head = self.head()
        # the first entry within the byte bound: every entry from it on holds at most keep_bytes
        row = self._db.execute("SELECT seq FROM journal WHERE total_bytes - length(payload) >= ? ORDER BY seq LIMIT 1",
                               (self._total - keep_bytes,)).fetchone()
        within_bytes = int(row[0]) if row is not None else head + 1
        # the first entry young enough: found from the oldest end, so it stops early
        row = self._db.execute("SELECT seq FROM journal WHERE timestamp_ms >= ? ORDER BY seq LIMIT 1",
                               (older_than_ms,)).fetchone()
        young_from = int(row[0]) if row is not None else head + 1
        through = max(young_from - 1, head - keep_rows, within_bytes - 1)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._db.execute("DELETE FROM journal WHERE seq <= ?", (through,)).rowcount
            self._db.execute("UPDATE journal_meta SET dropped = dropped + ? WHERE id = 1", (dropped,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return int(dropped)

    def purge_device(self, device: str) -> int:
        """Delete a device's entries (this region left its residency scope); a scan, as it is
        rare and the journal is bounded. Consumers see a gap in the positions; purged entries are
        not counted as ``dropped`` (retention did not drop them: they may no longer be here).

        The entries after the first one purged get their running ``total_bytes`` recomputed in
        the same transaction: ``held_bytes`` and the byte bound of ``prune`` read differences of
        it, which would otherwise still count the purged payloads."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT total_bytes - length(payload) FROM journal ORDER BY seq LIMIT 1").fetchone()
            before_oldest = int(row[0]) if row else self._total
            gone = [int(seq) for (seq,) in self._db.execute(
                "DELETE FROM journal WHERE client_id = ? RETURNING seq", (device,)).fetchall()]
            total = self._total
            if gone:
                first = min(gone)
                row = self._db.execute("SELECT total_bytes FROM journal WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                                       (first,)).fetchone()
                base = int(row[0]) if row else before_oldest
                self._db.execute(
                    "UPDATE journal SET total_bytes = running.total FROM (SELECT seq, ? + SUM(length(payload)) "
                    "OVER (ORDER BY seq) AS total FROM journal WHERE seq > ?) AS running "
                    "WHERE journal.seq = running.seq", (base, first))
                row = self._db.execute("SELECT total_bytes FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
                total = int(row[0]) if row else base
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._total = total
        return len(gone)

    def dropped(self) -> int:
        """Entries retention has dropped since the journal was created."""
        return int(self._db.execute("SELECT dropped FROM journal_meta WHERE id = 1").fetchone()[0])

    # -- consumers' offsets in this region ----------------------------------------------------

    def offset(self, consumer: str) -> int:
        row = self._db.execute("SELECT seq FROM offsets WHERE consumer = ?", (consumer,)).fetchone()
        return int(row[0]) if row else 0

    def set_offset(self, consumer: str, seq: int, now_ms: int) -> None:
        self._db.execute("INSERT INTO offsets (consumer, seq, updated_ms) VALUES (?, ?, ?) "
                         "ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq, updated_ms = excluded.updated_ms",
                         (consumer, seq, now_ms))

    def start_offset(self, consumer: str, seq: int, now_ms: int) -> None:
        """Set the consumer's offset unless it has one."""
        self._db.execute("INSERT OR IGNORE INTO offsets (consumer, seq, updated_ms) VALUES (?, ?, ?)",
                         (consumer, seq, now_ms))

    def forget(self, consumer: str) -> None:
        self._db.execute("DELETE FROM offsets WHERE consumer = ?", (consumer,))
