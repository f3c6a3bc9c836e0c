"""The region's journal for durable consumers: what it keeps, how it is read, how long it lasts.

Writing: the gate hands every device publish it accepted (live or Last Will, after the policy
allowed it) to ``record`` *before* the broker sends the PUBACK. A publish whose topic matches
some consumer's filters is appended to the journal there and then (synchronously: one SQLite
insert, tens of microseconds, less than a hand-off to a thread would cost), so a message a
device saw acknowledged is on disk even if the region is SIGKILLed right after. Others are not
kept at all. The filters are those of every consumer record this region holds, rebuilt when one
changes (they replicate), so a consumer created in A is journaled for in B as soon as B has it.

Reading: ``read`` answers the entries after a position that match one consumer's filters, and
waits (bounded) for new ones when there are none, so consumers long-poll instead of
busy-polling. Offsets are stored per consumer in this region's journal file; a consumer this
region has just learned of starts at the journal's head (what was kept before was kept for
other consumers), so a consumer sees what was published after every region knew it.

Retention: every ``PRUNE_EVERY_S`` the entries older than ``retention_s``, beyond the newest
``retention_rows`` or beyond ``retention_bytes`` of payload go, oldest first; the count is kept
(``dropped``, in ``/metrics``), and a reader whose position is before the oldest entry left is
told how many it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from geofleet.domain.consumers import (
    READ_SCAN_MAX,
    RETENTION_BYTES,
    RETENTION_ROWS,
    RETENTION_S,
    FilterSet,
    ReadPage,
    check_consumer_name,
    check_read,
    select,
)
from geofleet.domain.errors import InvalidRequest
from geofleet.domain.records import Kind, Record
from geofleet.services.ledger import Ledger
from geofleet.store.journal import SqliteJournal

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
LINGER_S = 0.01
"""A long poll woken by an append waits this long before it reads, so that a busy topic is read
in batches (one request per ~10 ms per consumer and region) rather than one request per
message, which would cost the region more than the messages themselves."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Journal:
    def __init__(self, store: SqliteJournal, ledger: Ledger, retention_s: float = RETENTION_S,
                 retention_rows: int = RETENTION_ROWS, retention_bytes: int = RETENTION_BYTES) -> None:
        self._store = store
        self._ledger = ledger
        self.region = store.region
        self._retention_s = retention_s
        self._retention_rows = retention_rows
        self._retention_bytes = retention_bytes
        self._filters = self._all_filters()
        self._appended = asyncio.Event()
        """Set (and replaced) on every append: what long-polling readers wait on."""
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        ledger.observe(self._changed)
        self._metrics = CollectorRegistry()
        self._entries = Gauge("geofleet_journal_entries", "Entries in the region's consumer journal", ["region"],
                              registry=self._metrics)
        self._head = Gauge("geofleet_journal_head", "The journal's last sequence number", ["region"],
                           registry=self._metrics)
        self._bytes = Gauge("geofleet_journal_bytes", "Payload bytes in the region's consumer journal", ["region"],
                            registry=self._metrics)
        self._dropped = Gauge("geofleet_journal_dropped_total", "Journal entries dropped by retention (age or "
                              "row bound) since the journal was created", ["region"], registry=self._metrics)

    # -- writing ---------------------------------------------------------------------------

    def purge_device(self, device: str) -> int:
        """Forget what the journal holds of a device (see ``services.residency``)."""
        return self._store.purge_device(device)

    def record(self, client_id: str, topic: str, payload: bytes) -> int | None:
        """Journal a device's accepted publish if some consumer wants its topic; its sequence
        number, or None when nobody does. Returns once the entry is committed."""
        if not self._filters or not self._filters.matches(topic):
            return None
        seq = self._store.append(topic, client_id, _now_ms(), payload)
        self._wake()
        return seq

    def _wake(self) -> None:
        woken, self._appended = self._appended, asyncio.Event()
        woken.set()

    def _all_filters(self) -> FilterSet:
        return FilterSet.of_consumers(r.body or {} for r in self._ledger.records(Kind.CONSUMER))

    def _changed(self, previous: Record | None, record: Record) -> None:
        if record.kind is not Kind.CONSUMER:
            return
        self._filters = self._all_filters()
        if record.deleted:
            self._store.forget(record.key)
            self._wake()  # its long polls answer NotFound now, not at their deadline
        elif previous is None or previous.deleted:
            # A new consumer starts where this region's journal is now: the entries before were
            # kept for other consumers, and only some of those would match its filters.
            self._store.start_offset(record.key, self._store.head(), _now_ms())

    # -- reading ---------------------------------------------------------------------------

    async def read(self, consumer: str, after: int, limit: int, wait_s: float) -> ReadPage:
        """The entries after ``after`` that match ``consumer``'s filters; with none yet, waits
        up to ``wait_s`` for some. NotFound for an unknown consumer."""
        check_read(after, limit, wait_s)
        check_consumer_name(consumer)
        head = self._store.head()
        if after > head:
            raise InvalidRequest(f"after={after} is beyond the journal of {self.region} (its head is {head}): "
                                 "an offset of another region, or of a journal that was reset?")
        deadline = time.monotonic() + wait_s
        position = after
        while True:
            appended = self._appended  # taken before reading: an append after the read wakes us
            body = self._ledger.require(Kind.CONSUMER, consumer, "consumer").body or {}
            filters = FilterSet(body.get("filters") or ())
            first = self._store.first()
            dropped = max(0, first - 1 - position)
            position = max(position, first - 1)
            with contextlib.closing(self._store.entries(position, READ_SCAN_MAX)) as rows:
                entries, last = select(rows, filters, limit)
            # rows looked at (matching or not) move the position on; an answer then, even an
            # empty one, keeps one request from scanning a long run of rows it does not want
            if entries or dropped or last is not None or self._closed or time.monotonic() >= deadline:
                return ReadPage(entries, position if last is None else last, self._store.head(), dropped)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(appended.wait(), max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(min(LINGER_S, max(0.0, deadline - time.monotonic())))

    def offset(self, consumer: str) -> int:
        self._ledger.require(Kind.CONSUMER, check_consumer_name(consumer), "consumer")
        return self._store.offset(consumer)

    def commit(self, consumer: str, seq: int) -> int:
        """Store ``consumer``'s offset in this region: where it resumes after a restart."""
        self._ledger.require(Kind.CONSUMER, check_consumer_name(consumer), "consumer")
        head = self._store.head()
        if not 0 <= seq <= head:
            raise InvalidRequest(f"offset {seq} is outside the journal of {self.region} (0-{head})")
        self._store.set_offset(consumer, seq, _now_ms())
        return seq

    # -- retention -------------------------------------------------------------------------

    def prune(self) -> int:
        dropped = self._store.prune(_now_ms() - int(self._retention_s * 1000), self._retention_rows,
                                    self._retention_bytes)
        if dropped:
            log.info("region %s: retention dropped %d journal entries (older than %g s, or beyond %d rows or "
                     "%d bytes)", self.region, dropped, self._retention_s, self._retention_rows, self._retention_bytes)
        return dropped

    async def start(self) -> None:
        self._task = asyncio.create_task(self._retain())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._closed = True
        self._appended.set()  # long-polling readers answer now

    async def _retain(self) -> None:
        while True:
            try:
                self.prune()
            except Exception:  # a full disk must not end retention for good
                log.exception("region %s: journal retention failed; trying again", self.region)
            await asyncio.sleep(PRUNE_EVERY_S)

    def close(self) -> None:
        self._store.close()

    def report(self) -> dict[str, int]:
        return {"head": self._store.head(), "first": self._store.first(), "entries": self._store.size(),
                "bytes": self._store.held_bytes(), "dropped": self._store.dropped()}

    def metrics(self) -> bytes:
        self._entries.labels(self.region).set(self._store.size())
        self._head.labels(self.region).set(self._store.head())
        self._bytes.labels(self.region).set(self._store.held_bytes())
        self._dropped.labels(self.region).set(self._store.dropped())
        return bytes(generate_latest(self._metrics))
