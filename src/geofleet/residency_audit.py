"""``geofleet residency audit``: the evidence that no region stores data outside its device's
residency scope (``domain.residency``).

It reads every region's files directly, read-only (SQLite ``mode=ro``, which works while the
fleet runs: the stores are in WAL mode), rather than asking the regions, because the claim to
prove is about what rests on disk, whatever the code believes it wrote.

The truth for a device's scope is its newest thing record, by (HLC, origin), across *all*
regions' stores: a region that has not yet heard of a ``device move`` is judged by the scope the
fleet decided, not by its stale copy. A thing tombstone carries no attributes; the scope it had is
the one in the ``scopes`` table (a deleted device's shadows may outlive its thing). A device no
store knows a thing of is scoped everywhere (today's behaviour).

What is checked, per region, for each device whose scope leaves that region out:

- ``store.db``: its shadows; its presence entries (records and parked records); its thing record
  if it holds more than the stub (``domain.residency.stub`` with the fleet's
  ``residency_global_attributes``); change-log entries of its shadows and presence entries, and
  thing entries holding more than the stub;
- ``journal.db``: journal rows whose ``client_id`` is the device;
- ``rules.db``: outbox rows and dead letters, where those tables have a ``device`` column (a note
  says so when they do not, rather than pretending to have checked).

Selection is done in SQL against a temporary table of the devices excluded from the region; only
candidate thing bodies are decoded in Python (with the same ``stub`` the regions use), so 10,000
devices take well under a second.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geofleet.config import DataDir
from geofleet.domain.errors import ConfigError
from geofleet.domain.records import Kind
from geofleet.domain.residency import EVERYWHERE, SHADOW_KIND, Scope, holds_more_than_stub

_PRESENCE = Kind.PRESENCE.value
_THING = Kind.THING.value

# The device a record or change-log entry of presence is about (``domain.residency.subject``).
_PRESENCE_DEVICE = ("CASE WHEN ref != '' THEN ref WHEN instr(key, '|') > 0 THEN substr(key, 1, instr(key, '|') - 1) "
                    "ELSE key END")
_SHADOW_DEVICE = "CASE WHEN instr(key, '|') > 0 THEN substr(key, 1, instr(key, '|') - 1) ELSE key END"


@dataclass(frozen=True, slots=True)
class RegionFiles:
    """One region's files; ``journal`` and ``rules`` may be absent (a region never started)."""

    store: Path
    journal: Path | None = None
    rules: Path | None = None


@dataclass(frozen=True, slots=True)
class Violation:
    """An item stored in ``region`` although ``device``'s scope leaves that region out."""

    region: str
    what: str
    """shadow, presence, parked presence, thing, changelog shadow, changelog presence,
    changelog thing, journal, rules outbox, dead letter"""
    device: str
    item: str
    """Which one: a shadow's name, a record's key, a change-log or journal sequence number."""
    scope: str
    """The device's scope (encoded), the regions it may rest in."""


@dataclass(slots=True)
class AuditReport:
    regions: list[str]
    checked: int = 0
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"regions": self.regions, "checked": self.checked, "clean": self.clean,
                "violations": [asdict(v) for v in self.violations], "notes": self.notes}

    def text(self) -> str:
        lines = [f"note: {note}" for note in self.notes]
        if self.clean:
            lines.append(f"no item is stored outside its device's residency scope ({self.checked} items checked in "
                         f"{len(self.regions)} regions)")
            return "\n".join(lines)
        lines.append(f"{'region':16} {'what':20} {'device':32} {'item':24} scope")
        lines += [f"{v.region:16} {v.what:20} {v.device:32} {v.item:24} {v.scope}" for v in self.violations]
        lines.append(f"{len(self.violations)} item(s) stored outside their device's residency scope "
                     f"({self.checked} items checked in {len(self.regions)} regions)")
        return "\n".join(lines)


def audit_data_dir(data: DataDir) -> AuditReport:
    """Audit every region of the fleet in ``data`` (its fleet.json names them)."""
    fleet = data.config()
    files = {}
    for region in fleet.regions:
        paths = data.region(region.name)
        files[region.name] = RegionFiles(paths.store, paths.journal, paths.root / "rules.db")
    return audit(files, fleet.residency_global_attributes)


def audit(regions: dict[str, RegionFiles], global_attributes: Iterable[str] = ()) -> AuditReport:
    """Every item stored in one of ``regions`` outside its device's residency scope."""
    extra = tuple(global_attributes)
    missing = [name for name, files in regions.items() if not files.store.is_file()]
    if missing:
        raise ConfigError(f"no store for region(s) {', '.join(missing)} (expected {regions[missing[0]].store}): "
                          "has the region ever run? audit a data directory whose regions have started")
    report = AuditReport(sorted(regions))
    scopes = device_scopes({name: files.store for name, files in regions.items()})
    for name in report.regions:
        excluded = [(device, scope) for device, scope in scopes.items() if not Scope.decode(scope).includes(name)]
        _audit_region(name, regions[name], excluded, extra, report)
    return report


def device_scopes(stores: dict[str, Path]) -> dict[str, str]:
    """Device -> its encoded scope, for every device some store names a scope for (the others
    are scoped everywhere). The newest thing record across the stores decides; a tombstone
    defers to the ``scopes`` table of the stores holding it (the intersection, if they differ)."""
    newest: dict[str, tuple[str, str, str | None]] = {}   # device -> (hlc, origin, regions attribute or None)
    tables: dict[str, dict[str, str]] = {}
    tombstones: dict[str, set[tuple[str, str, str]]] = {}
    for name, path in stores.items():
        with _readonly(path) as db:
            tables[name] = dict(db.execute("SELECT device, scope FROM scopes"))
            tombstones[name] = set(db.execute("SELECT key, hlc, origin FROM records WHERE kind = ? AND body IS NULL",
                                              (_THING,)))
            for device, hlc, origin, alive, regions in db.execute(
                    "SELECT key, hlc, origin, body IS NOT NULL, "
                    "json_extract(body, '$.attributes.\"geofleet:regions\"') FROM records WHERE kind = ?", (_THING,)):
                current = newest.get(device)
                if current is None or (hlc, origin) > current[:2]:
                    newest[device] = (hlc, origin, str(regions or "") if alive else None)
    scopes: dict[str, str] = {}
    for table in tables.values():
        for device, scope in table.items():
            if device not in newest:
                scopes[device] = _narrowest(scopes.get(device), scope)
    for device, (hlc, origin, regions) in newest.items():
        if regions is not None:
            scopes[device] = Scope.of(regions.split(",")).encode()
            continue
        known = None
        for name, table in tables.items():
            if device in table and (device, hlc, origin) in tombstones[name]:
                known = _narrowest(known, table[device])
        scopes[device] = known or EVERYWHERE
    return {device: scope for device, scope in scopes.items() if scope != EVERYWHERE}


def _narrowest(a: str | None, b: str) -> str:
    if a is None:
        return b
    first, second = Scope.decode(a), Scope.decode(b)
    if first.regions is None:
        return b
    if second.regions is None:
        return a
    return Scope(first.regions & second.regions).encode() if first.regions & second.regions else a


def _audit_region(region: str, files: RegionFiles, excluded: list[tuple[str, str]], extra: tuple[str, ...],
                  report: AuditReport) -> None:
    def found(what: str, rows: Iterable[tuple[str, Any, str]]) -> None:
        report.violations += [Violation(region, what, device, str(item), scope) for device, item, scope in rows]

    with _readonly(files.store) as db:
        db.execute("CREATE TEMP TABLE excluded (device TEXT PRIMARY KEY, scope TEXT NOT NULL)")
        db.executemany("INSERT INTO temp.excluded VALUES (?, ?)", excluded)
        report.checked += _count(db, "SELECT (SELECT count(*) FROM shadows) + (SELECT count(*) FROM records "
                                     "WHERE kind IN (?, ?)) + (SELECT count(*) FROM changelog) + "
                                     "(SELECT count(*) FROM pending WHERE kind = ?)", (_PRESENCE, _THING, _PRESENCE))
        found("shadow", db.execute("SELECT s.thing, s.name, x.scope FROM shadows s JOIN temp.excluded x "
                                   "ON x.device = s.thing ORDER BY s.thing, s.name"))
        found("presence", db.execute(f"SELECT x.device, r.key, x.scope FROM records r JOIN temp.excluded x "
                                     f"ON x.device = ({_PRESENCE_DEVICE}) WHERE r.kind = ? ORDER BY r.key",
                                     (_PRESENCE,)))
        found("parked presence", db.execute(f"SELECT x.device, p.key, x.scope FROM pending p JOIN temp.excluded x "
                                            f"ON x.device = ({_PRESENCE_DEVICE}) WHERE p.kind = ? ORDER BY p.key",
                                            (_PRESENCE,)))
        found("thing", _beyond_stub(db.execute(
            "SELECT r.key, r.key, x.scope, r.body FROM records r JOIN temp.excluded x ON x.device = r.key "
            "WHERE r.kind = ? AND r.body IS NOT NULL ORDER BY r.key", (_THING,)), extra))
        found("changelog shadow", db.execute(
            f"SELECT x.device, c.seq, x.scope FROM changelog c JOIN temp.excluded x ON x.device = ({_SHADOW_DEVICE}) "
            "WHERE c.kind = ? ORDER BY c.seq", (SHADOW_KIND,)))
        found("changelog presence", db.execute(
            f"SELECT x.device, c.seq, x.scope FROM changelog c JOIN temp.excluded x ON x.device = ({_PRESENCE_DEVICE}) "
            "WHERE c.kind = ? ORDER BY c.seq", (_PRESENCE,)))
        found("changelog thing", _beyond_stub(db.execute(
            "SELECT c.key, c.seq, x.scope, c.body FROM changelog c JOIN temp.excluded x ON x.device = c.key "
            "WHERE c.kind = ? AND c.body IS NOT NULL ORDER BY c.seq", (_THING,)), extra))
        if files.journal is not None and files.journal.is_file():
            _attach(db, files.journal, "journal")
            report.checked += _count(db, "SELECT count(*) FROM journal.journal")
            found("journal", db.execute("SELECT x.device, j.seq, x.scope FROM journal.journal j JOIN temp.excluded x "
                                        "ON x.device = j.client_id ORDER BY j.seq"))
        else:
            report.notes.append(f"{region}: no journal.db, nothing journalled to check")
        if files.rules is not None and files.rules.is_file():
            _attach(db, files.rules, "rules")
            for table, what in (("rule_outbox", "rules outbox"), ("rule_dead_letters", "dead letter")):
                columns = {row[1] for row in db.execute(f"PRAGMA rules.table_info({table})")}
                if not columns:
                    continue
                if "device" not in columns:
                    report.notes.append(f"{region}: rules.db {table} has no device column; its rows were not checked")
                    continue
                report.checked += _count(db, f"SELECT count(*) FROM rules.{table}")
                found(what, db.execute(f"SELECT x.device, t.id, x.scope FROM rules.{table} t JOIN temp.excluded x "
                                       "ON x.device = t.device ORDER BY t.id"))
        else:
            report.notes.append(f"{region}: no rules.db, no rules outbox to check")


def _beyond_stub(rows: Iterable[tuple[str, Any, str, str]], extra: tuple[str, ...]) -> Iterator[tuple[str, Any, str]]:
    for device, item, scope, body in rows:
        if holds_more_than_stub(json.loads(body), extra):
            yield device, item, scope


def _count(db: sqlite3.Connection, sql: str, args: tuple[Any, ...] = ()) -> int:
    return int(db.execute(sql, args).fetchone()[0] or 0)


def _uri(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro"


@contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection: the audit can never change what it audits."""
    try:
        db = sqlite3.connect(_uri(path), uri=True, isolation_level=None)
    except sqlite3.OperationalError as error:
        raise ConfigError(f"cannot open {path} read-only ({error}); is it a region's store?") from None
    with closing(db):
        try:
            yield db
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"cannot audit {path}: {error}") from None


def _attach(db: sqlite3.Connection, path: Path, alias: str) -> None:
    db.execute(f"ATTACH DATABASE ? AS {alias}", (_uri(path),))
