"""SQLite adapter of the store port.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash or SIGKILL of
the process (it is in the WAL file the moment ``commit`` returns); only a power loss may drop
the last few. The node calls it from its event loop thread: a write takes tens of
microseconds, less than handing it to a thread would cost.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from geofleet.domain.hlc import HLC, ZERO
from geofleet.domain.records import Kind, Record
from geofleet.domain.shadow import Shadow
from geofleet.store.base import SHADOW_KIND, Change

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, ref TEXT NOT NULL DEFAULT '',
    body TEXT, hlc TEXT NOT NULL, origin TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS records_ref ON records (kind, ref);
CREATE TABLE IF NOT EXISTS shadows (
    thing TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL,
    hlc TEXT NOT NULL, origin TEXT NOT NULL,
    PRIMARY KEY (thing, name)
);
CREATE TABLE IF NOT EXISTS changelog (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hlc TEXT NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT
);
"""


def _dump(body: dict[str, Any] | None) -> str | None:
    return None if body is None else json.dumps(body, separators=(",", ":"), sort_keys=True)


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- registry records -------------------------------------------------------------------

    def get(self, kind: Kind, key: str) -> Record | None:
        row = self._db.execute(
            "SELECT kind, key, ref, body, hlc, origin FROM records WHERE kind = ? AND key = ?",
            (kind.value, key),
        ).fetchone()
        return None if row is None else _record(row)

    def records(self, kind: Kind, *, prefix: str | None = None, ref: str | None = None) -> list[Record]:
        sql = "SELECT kind, key, ref, body, hlc, origin FROM records WHERE kind = ? AND body IS NOT NULL"
        args: list[str] = [kind.value]
        if prefix is not None:
            # A range scan on the primary key: every key that starts with the prefix.
            sql += " AND key >= ? AND key < ?"
            args += [prefix, prefix + "\U0010ffff"]
        if ref is not None:
            sql += " AND ref = ?"
            args.append(ref)
        return [_record(row) for row in self._db.execute(sql + " ORDER BY key", args)]

    def put(self, record: Record) -> int:
        body = _dump(record.body)
        hlc = record.hlc.encode()
        with self._transaction():
            self._db.execute(
                "INSERT INTO records (kind, key, ref, body, hlc, origin) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET ref = excluded.ref, body = excluded.body, "
                "hlc = excluded.hlc, origin = excluded.origin",
                (record.kind.value, record.key, record.ref, body, hlc, record.origin),
            )
            return self._log(hlc, record.origin, record.kind.value, record.key, body)

    # -- shadows -----------------------------------------------------------------------------

    def get_shadow(self, thing: str, name: str) -> Shadow | None:
        row = self._db.execute("SELECT doc FROM shadows WHERE thing = ? AND name = ?", (thing, name)).fetchone()
        return None if row is None else Shadow.from_json(json.loads(row[0]))

    def put_shadow(self, thing: str, name: str, shadow: Shadow, hlc: HLC, origin: str) -> int:
        doc = _dump(shadow.to_json())
        stamp = hlc.encode()
        with self._transaction():
            self._db.execute(
                "INSERT INTO shadows (thing, name, doc, hlc, origin) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (thing, name) DO UPDATE SET doc = excluded.doc, hlc = excluded.hlc, "
                "origin = excluded.origin",
                (thing, name, doc, stamp, origin),
            )
            return self._log(stamp, origin, SHADOW_KIND, f"{thing}|{name}", doc)

    def shadow_names(self, thing: str) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM shadows WHERE thing = ? AND json_extract(doc, '$.state') IS NOT NULL ORDER BY name",
            (thing,),
        )
        return [row[0] for row in rows]

    # -- change log --------------------------------------------------------------------------

    def changes(self, after: int, limit: int = 1000) -> list[Change]:
        rows = self._db.execute(
            "SELECT seq, hlc, origin, kind, key, body FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [Change(seq, HLC.decode(hlc), origin, kind, key, None if body is None else json.loads(body))
                for seq, hlc, origin, kind, key, body in rows]

    def last_hlc(self) -> HLC:
        row = self._db.execute("SELECT max(hlc) FROM changelog").fetchone()
        return HLC.decode(row[0]) if row and row[0] else ZERO

    def _log(self, hlc: str, origin: str, kind: str, key: str, body: str | None) -> int:
        cursor = self._db.execute(
            "INSERT INTO changelog (hlc, origin, kind, key, body) VALUES (?, ?, ?, ?, ?)",
            (hlc, origin, kind, key, body),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _record(row: tuple[str, str, str, str | None, str, str]) -> Record:
    kind, key, ref, body, hlc, origin = row
    return Record(Kind(kind), key, None if body is None else json.loads(body), HLC.decode(hlc), origin, ref)
