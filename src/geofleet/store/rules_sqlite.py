"""The rules engine's durable state: the outbox of actions still to deliver, the forward
receiver's positions, and the dead letters of actions that gave up.

It lives in a SQLite file of its own (``DIR/regions/R/rules.db``), beside the registry's store:
the two are written from the same event-loop thread, and two connections to one file would
make a write of one wait on a transaction of the other (the registry's observers run inside
its transactions). WAL and ``synchronous=NORMAL`` as the store: a row committed before a
device's PUBACK survives SIGKILL.

Bounds (nothing grows without limit): each outbox channel holds at most ``max_rows`` rows and
``max_bytes`` bytes (an enqueue beyond that raises ``OutboxFull``, and the caller runs the
rule's errorAction: the newest message is refused, the oldest kept, never silently); dead
letters keep the newest ``max_dead_letters``; positions are one row per (origin region, epoch).

Residency: every outbox row and dead letter names the device whose message it carries (its
``device`` column, the publisher's client id), so ``purge_device`` can delete what this region
keeps of a device when the region leaves the device's residency scope (``services.residency``).
A rules.db written before that column existed is migrated when opened: the column is added and
filled from each row's ``clientId``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofleet.domain.errors import GeofleetError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rule_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, body TEXT NOT NULL,
    bytes INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, device TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS rule_outbox_channel ON rule_outbox (channel, id);
CREATE INDEX IF NOT EXISTS rule_outbox_due ON rule_outbox (channel, due_ms);
CREATE TABLE IF NOT EXISTS rule_epoch (id INTEGER PRIMARY KEY CHECK (id = 1), epoch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rule_forward_marks (
    origin TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (origin, epoch)
);
CREATE TABLE IF NOT EXISTS rule_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, action TEXT NOT NULL, body TEXT NOT NULL,
    error TEXT NOT NULL, attempts INTEGER NOT NULL, failed_ms INTEGER NOT NULL, device TEXT NOT NULL DEFAULT ''
);
"""

_DEVICE_TABLES = ("rule_outbox", "rule_dead_letters")
"""The tables whose rows carry a device's message (and so its ``device`` column)."""

MAX_ROWS = 100_000
"""Per channel (one target region, or the webhooks): an hour of 25 messages a second."""
MAX_BYTES = 256 * 1024 * 1024
MAX_DEAD_LETTERS = 10_000


class OutboxFull(GeofleetError):
    status = 503
    code = "OutboxFull"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    body: dict[str, Any]
    attempts: int
    created_ms: int
    device: str = ""
    """The device whose message the row carries (the publisher's client id; may be empty)."""


class RulesStore:
    def __init__(self, path: Path | str, max_rows: int = MAX_ROWS, max_bytes: int = MAX_BYTES,
                 max_dead_letters: int = MAX_DEAD_LETTERS) -> None:
        if str(path) != ":memory:":
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._max_rows, self._max_bytes, self._max_dead = max_rows, max_bytes, max_dead_letters
        self._depth = 0
        self._db.execute("INSERT OR IGNORE INTO rule_epoch (id, epoch) VALUES (1, ?)", (uuid.uuid4().hex,))
        self.epoch: str = self._db.execute("SELECT epoch FROM rule_epoch").fetchone()[0]
        """Names this outbox: a receiver's position is per (origin, epoch), so an outbox rebuilt
        from nothing (ids starting again at 1) is never mistaken for one already seen."""
        self._sizes = self._read_sizes()

    def _migrate(self) -> None:
        """Bring a rules.db made by an older version up to this schema: the ``device`` columns
        (filled from the rows' ``clientId``, so their devices' data can be purged too) and their
        indexes. Idempotent; one transaction, so a crash leaves the old schema or the new one."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for table in _DEVICE_TABLES:
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if "device" not in columns:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN device TEXT NOT NULL DEFAULT ''")
                    self._db.execute(f"UPDATE {table} SET device = json_extract(body, '$.clientId') "
                                     "WHERE json_valid(body) AND json_type(body, '$.clientId') = 'text'")
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_device ON {table} (device)")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _read_sizes(self) -> dict[str, list[int]]:
        """Each channel's [messages, bytes], counted in the table (kept in memory after that)."""
        return {channel: [count, size] for channel, count, size in self._db.execute(
            "SELECT channel, COUNT(*), COALESCE(SUM(bytes), 0) FROM rule_outbox GROUP BY channel")}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction (nested uses join it). On rollback the size counters are re-read."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
                self._sizes = self._read_sizes()
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")

    # -- the outbox ------------------------------------------------------------------------

    def enqueue(self, channel: str, body: dict[str, Any], now_ms: int, device: str | None = None) -> int:
        """Add a row for ``channel``; ``device``: the device whose message it carries (what
        ``purge_device`` deletes by; the body's ``clientId`` when not given)."""
        text = json.dumps(body, separators=(",", ":"))
        count, size = self._sizes.get(channel, [0, 0])
        if count >= self._max_rows or size + len(text) > self._max_bytes:
            raise OutboxFull(f"the rules outbox for {channel} is full ({count} messages, {size} bytes; at most "
                             f"{self._max_rows} and {self._max_bytes}): its target has been unreachable too long")
        cursor = self._db.execute(
            "INSERT INTO rule_outbox (channel, body, bytes, due_ms, created_ms, device) VALUES (?, ?, ?, ?, ?, ?)",
            (channel, text, len(text), now_ms, now_ms, _client_id(body) if device is None else device))
        self._sizes[channel] = [count + 1, size + len(text)]
        return int(cursor.lastrowid or 0)

    def batch(self, channel: str, limit: int, max_bytes: int, due_by_ms: int | None = None) -> list[OutboxRow]:
        """The oldest rows of ``channel`` (due by ``due_by_ms`` if given), at most ``limit`` rows
        and about ``max_bytes`` (always at least one row)."""
        if due_by_ms is None:
            rows = self._db.execute("SELECT id, body, attempts, created_ms, bytes, device FROM rule_outbox "
                                    "WHERE channel = ? ORDER BY id LIMIT ?", (channel, limit))
        else:
            rows = self._db.execute("SELECT id, body, attempts, created_ms, bytes, device FROM rule_outbox "
                                    "WHERE channel = ? AND due_ms <= ? ORDER BY due_ms, id LIMIT ?",
                                    (channel, due_by_ms, limit))
        found: list[OutboxRow] = []
        total = 0
        for row_id, body, attempts, created_ms, size, device in rows:
            if found and total + size > max_bytes:
                break
            total += size
            found.append(OutboxRow(row_id, json.loads(body), attempts, created_ms, device))
        return found

    def next_due_ms(self, channel: str) -> int | None:
        row = self._db.execute("SELECT MIN(due_ms) FROM rule_outbox WHERE channel = ?", (channel,)).fetchone()
        return None if row[0] is None else int(row[0])

    def remove(self, channel: str, ids: list[int]) -> int:
        """Delete these rows of ``channel``; how many were still there."""
        removed = 0
        for row_id in ids:
            found = self._db.execute("DELETE FROM rule_outbox WHERE id = ? AND channel = ? RETURNING bytes",
                                     (row_id, channel)).fetchone()
            if found is not None:
                removed += 1
                count, size = self._sizes.get(channel, [1, found[0]])
                self._sizes[channel] = [count - 1, size - found[0]]
        return removed

    def retry_later(self, row_id: int, attempts: int, due_ms: int) -> None:
        self._db.execute("UPDATE rule_outbox SET attempts = ?, due_ms = ? WHERE id = ?", (attempts, due_ms, row_id))

    def depth(self) -> dict[str, dict[str, int]]:
        return {channel: {"messages": n, "bytes": b} for channel, (n, b) in sorted(self._sizes.items()) if n}

    # -- dead letters ----------------------------------------------------------------------

    def dead_letter(self, channel: str, row: OutboxRow, rule: str, action: dict[str, Any], error: str,
                    now_ms: int) -> bool:
        """Move ``row`` out of the outbox into the dead letters, in one transaction. False (and
        nothing written) when the row is no longer in the outbox: ``purge_device`` deleted it
        while a sender was delivering it, and what was purged must not come back."""
        with self.atomic():
            if not self.remove(channel, [row.id]):
                return False
            self._db.execute("INSERT INTO rule_dead_letters (rule, action, body, error, attempts, failed_ms, device) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (rule, json.dumps(action), json.dumps(row.body), error, row.attempts, now_ms,
                              row.device or _client_id(row.body)))
            self._db.execute("DELETE FROM rule_dead_letters WHERE id <= (SELECT MAX(id) FROM rule_dead_letters) - ?",
                             (self._max_dead,))
        return True

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, rule, action, body, error, attempts, failed_ms FROM rule_dead_letters "
                                "ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": i, "ruleName": rule, "action": json.loads(action), "message": json.loads(body),
                 "errorMessage": error, "attempts": attempts, "failedAt": failed}
                for i, rule, action, body, error, attempts, failed in rows]

    # -- residency -------------------------------------------------------------------------

    def purge_device(self, device: str) -> int:
        """Delete the device's outbox rows and dead letters (this region left its residency
        scope: see ``services.residency``); how many went. The outbox's size counters follow."""
        with self.atomic():
            gone = self._db.execute("DELETE FROM rule_outbox WHERE device = ? RETURNING channel, bytes",
                                    (device,)).fetchall()
            for channel, size in gone:
                count, held = self._sizes.get(channel, [1, size])
                self._sizes[channel] = [count - 1, held - size]
            dead = self._db.execute("DELETE FROM rule_dead_letters WHERE device = ?", (device,)).rowcount
        return len(gone) + int(dead)

    # -- the receiver's positions ----------------------------------------------------------

    def mark(self, origin: str, epoch: str) -> int:
        row = self._db.execute("SELECT seq FROM rule_forward_marks WHERE origin = ? AND epoch = ?",
                               (origin, epoch)).fetchone()
        return 0 if row is None else int(row[0])

    def set_mark(self, origin: str, epoch: str, seq: int) -> None:
        self._db.execute("INSERT INTO rule_forward_marks (origin, epoch, seq) VALUES (?, ?, ?) "
                         "ON CONFLICT (origin, epoch) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                         (origin, epoch, seq))


def _client_id(body: dict[str, Any]) -> str:
    """The device a row's body names (rows made without an explicit device)."""
    client_id = body.get("clientId", "")
    return client_id if isinstance(client_id, str) else ""
