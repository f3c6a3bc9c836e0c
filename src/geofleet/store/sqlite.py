"""SQLite adapter of the store port.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash or SIGKILL of
the process (it is in the WAL file the moment ``commit`` returns); only a power loss may drop
the last few. The node calls it from its event loop thread: a write takes tens of
microseconds, less than handing it to a thread would cost.

The change log holds this region's own writes only. Changes applied from other regions are not
logged again, so nothing is ever shipped back to where it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geofleet.domain.digest import BucketDigests, bucket_of, record_item, shadow_item
from geofleet.domain.guard import GuardEntry
from geofleet.domain.hlc import HLC, ZERO
from geofleet.domain.leaves import Leaves
from geofleet.domain.records import Kind, Record
from geofleet.domain.residency import EVERYWHERE, SHADOW_KIND, Scope, stub, subject
from geofleet.domain.shadow import Shadow
from geofleet.store.base import Change
from geofleet.store.sealing import Sealer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, ref TEXT NOT NULL DEFAULT '',
    body TEXT, hlc TEXT NOT NULL, origin TEXT NOT NULL, bucket INTEGER NOT NULL,
    scope TEXT NOT NULL DEFAULT '*',
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS records_ref ON records (kind, ref);
CREATE INDEX IF NOT EXISTS records_bucket ON records (bucket);
CREATE TABLE IF NOT EXISTS seen_everywhere (
    kind TEXT NOT NULL, key TEXT NOT NULL, hlc TEXT NOT NULL, PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS shadows (
    thing TEXT NOT NULL, name TEXT NOT NULL, doc TEXT NOT NULL,
    hlc TEXT NOT NULL, origin TEXT NOT NULL, bucket INTEGER NOT NULL, item TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT '*',
    PRIMARY KEY (thing, name)
);
CREATE TABLE IF NOT EXISTS scopes (
    device TEXT PRIMARY KEY, scope TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS shadows_bucket ON shadows (bucket);
CREATE TABLE IF NOT EXISTS changelog (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hlc TEXT NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    ref TEXT NOT NULL DEFAULT '', body TEXT
);
CREATE INDEX IF NOT EXISTS changelog_kind ON changelog (kind, seq);
CREATE TABLE IF NOT EXISTS cursors (
    peer TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (peer, stream)
);
CREATE TABLE IF NOT EXISTS pending (
    kind TEXT NOT NULL, key TEXT NOT NULL, ref TEXT NOT NULL, body TEXT, hlc TEXT NOT NULL,
    origin TEXT NOT NULL, needs_kind TEXT NOT NULL, needs_key TEXT NOT NULL,
    PRIMARY KEY (kind, key, hlc, origin, needs_kind, needs_key)
);
CREATE INDEX IF NOT EXISTS pending_needs ON pending (needs_kind, needs_key);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY CHECK (id = 1), probed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS guards (
    device_id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, answer TEXT, claimed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS claim_pending (
    certificate_id TEXT PRIMARY KEY, claim_certificate_id TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS claim_pending_expiry ON claim_pending (expires_ms);
CREATE INDEX IF NOT EXISTS claim_pending_claim ON claim_pending (claim_certificate_id);
"""

_RECORD_COLUMNS = "kind, key, ref, body, hlc, origin"


def _dump(body: dict[str, Any] | None) -> str | None:
    return None if body is None else json.dumps(body, separators=(",", ":"), sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class SqliteStore:
    def __init__(self, path: Path | str, sealer: Sealer | None = None) -> None:
        """``sealer`` encrypts the secrets records hold (see ``sealing.py``); None keeps them plain."""
        if str(path) != ":memory:":
            _private_files(Path(path))
        self._sealer = sealer
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA secure_delete=ON")  # a replaced or deleted secret leaves no old bytes behind
        self._db.executescript(_SCHEMA)
        self._depth = 0
        self._logged = False
        self._digests: dict[str, BucketDigests] | None = None
        """Anti-entropy digests per residency scope, built on first use and then kept current by
        every write."""
        self._scopes: dict[str, str] = {}
        """Device -> its encoded residency scope, for the devices that have one."""
        self._migrate()
        self._scopes = dict(self._db.execute("SELECT device, scope FROM scopes").fetchall())
        self.on_change: Callable[[], None] | None = None
        """Called after a transaction that appended to the change log commits."""

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """A store written before residency scopes: add the scope columns and scope every
        device's items from its thing record."""
        for table in ("records", "shadows"):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if "scope" not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN scope TEXT NOT NULL DEFAULT '*'")
        if self._db.execute("SELECT count(*) FROM scopes").fetchone()[0]:
            return
        things = self._db.execute("SELECT key, body FROM records WHERE kind = ? AND body IS NOT NULL",
                                  (Kind.THING.value,)).fetchall()
        with self.atomic():
            for key, body in things:
                self._rescope(key, Scope.of_thing(_load(body)).encode())

    def _dump_body(self, record: Record) -> str | None:
        body = record.body
        if self._sealer is not None:
            body = self._sealer.seal_body(record.kind.value, record.key, body)
        return _dump(body)

    def _open(self, kind: str, key: str, body: Any) -> Any:
        return body if self._sealer is None else self._sealer.open_body(kind, key, body)

    def _record(self, row: tuple[str, str, str, str | None, str, str]) -> Record:
        kind, key, ref, body, hlc, origin = row
        return Record(Kind(kind), key, self._open(kind, key, _load(body)), HLC.decode(hlc), origin, ref)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction around everything inside; nested uses join the outer one."""
        if self._depth == 0:
            self._db.execute("BEGIN IMMEDIATE")
            self._logged = False
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self._db.execute("ROLLBACK")
                self._digests = None  # rebuilt on next use rather than unwound
                self._scopes = dict(self._db.execute("SELECT device, scope FROM scopes").fetchall())
            raise
        self._depth -= 1
        if self._depth == 0:
            self._db.execute("COMMIT")
            if self._logged and self.on_change is not None:
                self.on_change()

    # -- registry records -------------------------------------------------------------------

    def get(self, kind: Kind, key: str) -> Record | None:
        row = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE kind = ? AND key = ?", (kind.value, key)
        ).fetchone()
        return None if row is None else self._record(row)

    def records(self, kind: Kind, *, prefix: str | None = None, ref: str | None = None) -> list[Record]:
        sql = f"SELECT {_RECORD_COLUMNS} FROM records WHERE kind = ? AND body IS NOT NULL"
        args: list[str] = [kind.value]
        if prefix is not None:
            # A range scan on the primary key: every key that starts with the prefix.
            sql += " AND key >= ? AND key < ?"
            args += [prefix, prefix + "\U0010ffff"]
        if ref is not None:
            sql += " AND ref = ?"
            args.append(ref)
        return [self._record(row) for row in self._db.execute(sql + " ORDER BY key", args)]

    def records_after(self, kind: Kind, after: str, limit: int) -> list[Record]:
        """Live records of ``kind`` with keys after ``after``, in key order, at most ``limit``: a
        keyset page (a range scan on the primary key), for listings read a page at a time."""
        rows = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE kind = ? AND key > ? AND body IS NOT NULL "
            "ORDER BY key LIMIT ?", (kind.value, after, limit))
        return [self._record(row) for row in rows]

    def put(self, record: Record, *, log: bool = True, logged: Record | None = None) -> None:
        """Write a record (a tombstone when ``body`` is None); ``log`` appends it (or ``logged``,
        the full version of a thing kept here as its residency stub) to the change log, for
        writes made in this region. A live thing's ``geofleet:regions`` sets its
        device's residency scope (a tombstone keeps the last one: its shadows may outlive it)."""
        body = self._dump_body(record)
        bucket = bucket_of(record.kind.value, record.key)
        device = subject(record.kind.value, record.key, record.ref)
        scope = self.scope_of(device) if device is not None else EVERYWHERE
        with self.atomic():
            if self._digests is not None:
                old = self._db.execute("SELECT hlc, origin, scope FROM records WHERE kind = ? AND key = ? AND body "
                                       "IS NOT NULL", (record.kind.value, record.key)).fetchone()
                if old is not None:
                    self._toggle(old[2], bucket, record_item(record.kind.value, record.key, old[0], old[1]))
                if body is not None:
                    self._toggle(scope, bucket, record_item(record.kind.value, record.key, record.hlc.encode(),
                                                            record.origin))
            self._db.execute(
                f"INSERT INTO records ({_RECORD_COLUMNS}, bucket, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET ref = excluded.ref, body = excluded.body, "
                "hlc = excluded.hlc, origin = excluded.origin, scope = excluded.scope",
                (record.kind.value, record.key, record.ref, body, record.hlc.encode(), record.origin, bucket, scope),
            )
            if record.kind is Kind.THING and record.body is not None:
                self._rescope(record.key, Scope.of_thing(record.body).encode())
            if log:
                full = body if logged is None or logged is record else self._dump_body(logged)
                self._log(record.hlc, record.origin, record.kind.value, record.key, record.ref, full)

    # -- residency scopes ----------------------------------------------------------------------

    def scope_of(self, device: str) -> str:
        """The device's encoded residency scope (``domain.residency``); ``*`` when it has none."""
        return self._scopes.get(device, EVERYWHERE)

    def _rescope(self, device: str, scope: str) -> None:
        """Give the device's scoped items (shadows, presence entries) a new scope, moving their
        digest items with them (inside the caller's transaction)."""
        if self.scope_of(device) == scope:
            return
        if self._digests is not None:
            for old, bucket, item in self._scoped_items(device):
                self._toggle(old, bucket, item)
                self._toggle(scope, bucket, item)
        self._db.execute("UPDATE shadows SET scope = ? WHERE thing = ?", (scope, device))
        self._db.execute("UPDATE records SET scope = ? WHERE kind = ? AND ref = ?",
                         (scope, Kind.PRESENCE.value, device))
        self._db.execute("INSERT INTO scopes (device, scope) VALUES (?, ?) ON CONFLICT (device) DO UPDATE SET "
                         "scope = excluded.scope", (device, scope))
        self._scopes[device] = scope

    def _scoped_items(self, device: str) -> list[tuple[str, int, int]]:
        """(scope, bucket, digest item) of the device's shadows and live presence entries."""
        items = [(scope, bucket, int(item, 16)) for scope, bucket, item in self._db.execute(
            "SELECT scope, bucket, item FROM shadows WHERE thing = ?", (device,))]
        items += [(scope, bucket, record_item(Kind.PRESENCE.value, key, hlc, origin))
                  for scope, bucket, key, hlc, origin in self._db.execute(
                      "SELECT scope, bucket, key, hlc, origin FROM records WHERE kind = ? AND ref = ? AND body IS "
                      "NOT NULL", (Kind.PRESENCE.value, device))]
        return items

    def purge_device(self, device: str, keep_attributes: tuple[str, ...] = ()) -> int:
        """Delete the device's scoped items here (its shadows and presence entries, tombstones
        included): this region left its scope. Nothing of them stays, not even a tombstone; the
        thing's stub (which names the scope) is what keeps a late write from landing again.

        The change log goes the same way ("not even transiently in a change log"): entries of
        its shadows and presence are deleted (peers in the scope that had not pulled them get
        the data by anti-entropy from where it still rests), and its older thing entries keep
        only their stub (``keep_attributes``: the fleet's extra global attributes). The entry of
        the thing version that moved the scope stays whole when this region wrote it: it is how
        the regions of the new scope learn the full version."""
        with self.atomic():
            self._stub_logged_things(device, keep_attributes)
            self._db.execute("DELETE FROM changelog WHERE kind = ? AND substr(key, 1, ?) = ?",
                             (SHADOW_KIND, len(device) + 1, f"{device}|"))
            self._db.execute("DELETE FROM changelog WHERE kind = ? AND ref = ?", (Kind.PRESENCE.value, device))
            if self._digests is not None:
                for scope, bucket, item in self._scoped_items(device):
                    self._toggle(scope, bucket, item)
            gone = self._db.execute("DELETE FROM shadows WHERE thing = ?", (device,)).rowcount
            gone += self._db.execute("DELETE FROM records WHERE kind = ? AND ref = ?",
                                     (Kind.PRESENCE.value, device)).rowcount
            self._db.execute("DELETE FROM pending WHERE kind = ? AND ref = ?", (Kind.PRESENCE.value, device))
        return gone

    def _stub_logged_things(self, device: str, keep_attributes: tuple[str, ...]) -> None:
        current = self._db.execute("SELECT hlc FROM records WHERE kind = ? AND key = ?",
                                   (Kind.THING.value, device)).fetchone()
        if current is None:
            return
        rows = self._db.execute("SELECT seq, body FROM changelog WHERE kind = ? AND key = ? AND hlc < ? AND body IS "
                                "NOT NULL", (Kind.THING.value, device, current[0])).fetchall()
        self._db.executemany("UPDATE changelog SET body = ? WHERE seq = ?",
                             [(_dump(stub(_load(body), keep_attributes)), seq) for seq, body in rows])

    def _toggle(self, scope: str, bucket: int, item: int) -> None:
        if self._digests is None:
            return
        digests = self._digests.get(scope)
        if digests is None:
            digests = self._digests[scope] = BucketDigests()
        digests.toggle(bucket, item)

    # -- shadows -----------------------------------------------------------------------------

    def get_shadow(self, thing: str, name: str) -> Shadow | None:
        row = self._db.execute("SELECT doc FROM shadows WHERE thing = ? AND name = ?", (thing, name)).fetchone()
        return None if row is None else Shadow.from_json(json.loads(row[0]))

    def put_shadow(self, thing: str, name: str, shadow: Shadow, hlc: HLC, origin: str,
                   ops: Leaves | None = None) -> None:
        """Store a shadow; ``ops`` (this region's stamped writes) go to the change log."""
        key = shadow_key(thing, name)
        bucket, item = bucket_of(SHADOW_KIND, key), shadow_item(key, shadow.leaves)
        scope = self.scope_of(thing)
        with self.atomic():
            if self._digests is not None:
                old = self._db.execute("SELECT item, scope FROM shadows WHERE thing = ? AND name = ?",
                                       (thing, name)).fetchone()
                if old is not None:
                    self._toggle(old[1], bucket, int(old[0], 16))
                self._toggle(scope, bucket, item)
            self._db.execute(
                "INSERT INTO shadows (thing, name, doc, hlc, origin, bucket, item, scope) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (thing, name) DO UPDATE SET doc = excluded.doc, hlc = excluded.hlc, "
                "origin = excluded.origin, item = excluded.item, scope = excluded.scope",
                (thing, name, _dump(shadow.to_json()), hlc.encode(), origin, bucket, f"{item:032x}", scope),
            )
            if ops is not None:
                self._log(hlc, origin, SHADOW_KIND, shadow_key(thing, name), "", _dump({"ops": ops}))

    def shadow_names(self, thing: str) -> list[str]:
        rows = self._db.execute(
            "SELECT name FROM shadows WHERE thing = ? AND json_extract(doc, '$.state') IS NOT NULL "
            "ORDER BY name",
            (thing,),
        )
        return [row[0] for row in rows]

    def shadow_names_after(self, thing: str, after: str, limit: int) -> list[str]:
        """A keyset page of ``shadow_names``: names after ``after``, at most ``limit``."""
        rows = self._db.execute(
            "SELECT name FROM shadows WHERE thing = ? AND name > ? AND json_extract(doc, '$.state') IS NOT NULL "
            "ORDER BY name LIMIT ?",
            (thing, after, limit),
        )
        return [row[0] for row in rows]

    # -- anti-entropy ------------------------------------------------------------------------

    def bucket_digests(self) -> dict[str, dict[int, str]]:
        """Scope -> bucket -> digest, for every scope this region holds items of."""
        if self._digests is None:
            self._digests = {}
            for kind, key, hlc, origin, bucket, scope in self._db.execute(
                    "SELECT kind, key, hlc, origin, bucket, scope FROM records WHERE body IS NOT NULL"):
                self._toggle(scope, bucket, record_item(kind, key, hlc, origin))
            for item, bucket, scope in self._db.execute("SELECT item, bucket, scope FROM shadows"):
                self._toggle(scope, bucket, int(item, 16))
        return {scope: buckets for scope, digests in self._digests.items() if (buckets := digests.as_dict())}

    def bucket_items(self, bucket: int, scope: str) -> tuple[list[Record], list[tuple[str, Leaves]]]:
        """Every record (tombstones included) and every shadow's leaves of one scope in one bucket."""
        records = [self._record(row) for row in self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM records WHERE bucket = ? AND scope = ?", (bucket, scope))]
        shadows = [(shadow_key(thing, name), json.loads(doc).get("leaves") or {}) for thing, name, doc in
                   self._db.execute("SELECT thing, name, doc FROM shadows WHERE bucket = ? AND scope = ?",
                                    (bucket, scope))]
        return records, shadows

    # -- change log --------------------------------------------------------------------------

    def changes(self, after: int, limit: int = 1000, kinds: tuple[str, ...] | None = None) -> list[Change]:
        sql = "SELECT seq, hlc, origin, kind, key, ref, body FROM changelog WHERE seq > ?"
        args: list[Any] = [after]
        if kinds:
            sql += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            args += list(kinds)
        rows = self._db.execute(sql + " ORDER BY seq LIMIT ?", [*args, limit])
        return [Change(seq, HLC.decode(hlc), origin, kind, key, ref, self._open(kind, key, _load(body)))
                for seq, hlc, origin, kind, key, ref, body in rows]

    def head(self) -> int:
        """The last sequence number ever given (AUTOINCREMENT never reuses one, and keeps it after
        the log is truncated)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changelog'").fetchone()
        return int(row[0]) if row else 0

    def log_start(self) -> int:
        """The last sequence number truncated from the log (0: nothing was): a peer whose cursor
        is before it has missed changes the log no longer holds."""
        row = self._db.execute("SELECT min(seq) FROM changelog").fetchone()
        return int(row[0]) - 1 if row[0] is not None else self.head()

    def log_expired_through(self, before: HLC, scan: int = 5000) -> int:
        """The last sequence number of the log's oldest entries stamped before ``before`` (0 if
        none); looks at the first ``scan`` entries only, so one round stays cheap."""
        row = self._db.execute(
            "SELECT max(seq) FROM (SELECT seq, hlc FROM changelog ORDER BY seq LIMIT ?) WHERE hlc < ?",
            (scan, before.encode())).fetchone()
        return int(row[0] or 0)

    def truncate_log(self, through: int) -> int:
        """Delete the log's entries up to ``through``; returns how many went."""
        with self.atomic():
            return self._db.execute("DELETE FROM changelog WHERE seq <= ?", (through,)).rowcount

    def last_hlc(self) -> HLC:
        row = self._db.execute(
            "SELECT max(h) FROM (SELECT max(hlc) AS h FROM changelog UNION ALL SELECT max(hlc) FROM records "
            "UNION ALL SELECT max(hlc) FROM shadows)"
        ).fetchone()
        return HLC.decode(row[0]) if row and row[0] else ZERO

    def _log(self, hlc: HLC, origin: str, kind: str, key: str, ref: str, body: str | None) -> None:
        self._db.execute(
            "INSERT INTO changelog (hlc, origin, kind, key, ref, body) VALUES (?, ?, ?, ?, ?, ?)",
            (hlc.encode(), origin, kind, key, ref, body),
        )
        self._logged = True

    # -- replication bookkeeping -------------------------------------------------------------

    def cursor(self, peer: str, stream: str) -> int:
        row = self._db.execute("SELECT seq FROM cursors WHERE peer = ? AND stream = ?", (peer, stream)).fetchone()
        return int(row[0]) if row else 0

    def set_cursor(self, peer: str, stream: str, seq: int) -> None:
        with self.atomic():
            self._db.execute(
                "INSERT INTO cursors (peer, stream, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (peer, stream) DO UPDATE SET seq = max(seq, excluded.seq)",
                (peer, stream, seq),
            )

    def park(self, record: Record, needs: list[tuple[Kind, str]]) -> None:
        """Keep a record that cannot be applied until the records it ``needs`` arrive."""
        with self.atomic():
            for kind, key in needs:
                self._db.execute(
                    "INSERT OR IGNORE INTO pending (kind, key, ref, body, hlc, origin, needs_kind, needs_key) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.kind.value, record.key, record.ref, self._dump_body(record), record.hlc.encode(),
                     record.origin, kind.value, key),
                )

    def unpark(self, kind: Kind, key: str) -> list[Record]:
        """Take out the records that were waiting for (kind, key)."""
        with self.atomic():
            rows = self._db.execute(
                f"SELECT DISTINCT {_RECORD_COLUMNS} FROM pending WHERE needs_kind = ? AND needs_key = ?",
                (kind.value, key),
            ).fetchall()
            self._db.execute("DELETE FROM pending WHERE needs_kind = ? AND needs_key = ?", (kind.value, key))
        return [self._record(row) for row in rows]

    # -- provision-once guard (only in a device id's owner region) ------------------------------

    def guard_get(self, device_id: str) -> GuardEntry | None:
        row = self._db.execute("SELECT fingerprint, answer, claimed_ms FROM guards WHERE device_id = ?",
                               (device_id,)).fetchone()
        return None if row is None else GuardEntry(row[0], _load(row[1]), row[2])

    def guard_put(self, device_id: str, fingerprint: str, claimed_ms: int) -> None:
        """Persist a new claim (the rule that allows it is ``domain.guard.claim``)."""
        with self.atomic():
            self._db.execute("INSERT OR REPLACE INTO guards (device_id, fingerprint, answer, claimed_ms) "
                             "VALUES (?, ?, NULL, ?)", (device_id, fingerprint, claimed_ms))

    def guard_complete(self, device_id: str, fingerprint: str, answer: dict[str, Any]) -> None:
        with self.atomic():
            self._db.execute("UPDATE guards SET answer = ? WHERE device_id = ? AND fingerprint = ?",
                             (_dump(answer), device_id, fingerprint))

    def guard_release(self, device_id: str, fingerprint: str) -> None:
        """Give up a claim that failed before completing (or to allow re-provisioning)."""
        with self.atomic():
            self._db.execute("DELETE FROM guards WHERE device_id = ? AND fingerprint = ?", (device_id, fingerprint))

    # -- certificates made by fleet provisioning, awaiting RegisterThing (local bookkeeping) ------

    def claim_pending_add(self, certificate_id: str, claim_certificate_id: str, expires_ms: int) -> None:
        """Remember a PENDING_ACTIVATION certificate this region made by CreateCertificateFromCsr
        for a claim certificate, so that it is collected if its ownership token expires unused."""
        with self.atomic():
            self._db.execute("INSERT OR REPLACE INTO claim_pending (certificate_id, claim_certificate_id, expires_ms) "
                             "VALUES (?, ?, ?)", (certificate_id, claim_certificate_id, expires_ms))

    def claim_pending_count(self, claim_certificate_id: str) -> int:
        """How many certificates this region made for the claim certificate are still
        PENDING_ACTIVATION (made, neither provisioned, anywhere, nor collected)."""
        row = self._db.execute(
            "SELECT count(*) FROM claim_pending p JOIN records r ON r.kind = ? AND r.key = p.certificate_id "
            "WHERE p.claim_certificate_id = ? AND json_extract(r.body, '$.status') = 'PENDING_ACTIVATION'",
            (Kind.CERTIFICATE.value, claim_certificate_id)).fetchone()
        return int(row[0])

    def claim_pending_due(self, now_ms: int, limit: int = 100) -> list[str]:
        """The remembered certificates whose ownership token expired before ``now_ms``, oldest first."""
        rows = self._db.execute("SELECT certificate_id FROM claim_pending WHERE expires_ms < ? "
                                "ORDER BY expires_ms LIMIT ?", (now_ms, limit))
        return [row[0] for row in rows]

    def claim_pending_done(self, certificate_id: str) -> None:
        with self.atomic():
            self._db.execute("DELETE FROM claim_pending WHERE certificate_id = ?", (certificate_id,))

    def mark_tombstones_seen(self, since: HLC, until: HLC) -> None:
        """Every region holds the tombstones written in [since, until): they may be collected."""
        with self.atomic():
            self._db.execute(
                "INSERT OR REPLACE INTO seen_everywhere (kind, key, hlc) SELECT kind, key, hlc FROM records "
                "WHERE body IS NULL AND hlc >= ? AND hlc < ?", (since.encode(), until.encode()))

    def collect_tombstones(self, before: HLC) -> int:
        """Delete tombstones older than ``before`` that every region was known to hold."""
        with self.atomic():
            cursor = self._db.execute(
                "DELETE FROM records WHERE body IS NULL AND hlc < ? AND EXISTS (SELECT 1 FROM seen_everywhere s "
                "WHERE s.kind = records.kind AND s.key = records.key AND s.hlc = records.hlc)", (before.encode(),))
            self._db.execute("DELETE FROM seen_everywhere WHERE hlc < ?", (before.encode(),))
        return cursor.rowcount

    def probe(self, now_ms: int) -> None:
        with self.atomic():
            self._db.execute("INSERT INTO health (id, probed_ms) VALUES (1, ?) "
                             "ON CONFLICT (id) DO UPDATE SET probed_ms = excluded.probed_ms", (now_ms,))

    def parked(self) -> int:
        return int(self._db.execute("SELECT count(DISTINCT kind || key || hlc) FROM pending").fetchone()[0])


def shadow_key(thing: str, name: str) -> str:
    return f"{thing}|{name}"


def _private_files(path: Path) -> None:
    """The database and its WAL and shared-memory files: 0600 (SQLite gives the -wal and -shm
    files the database file's mode, so creating that one 0600 covers them as they appear)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)
