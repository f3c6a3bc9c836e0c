"""Durable consumers, the pure parts and the journal on a real SQLite file: names and filters,
selection of a consumer's entries, the journal's sequence and retention bound, offsets, and the
service that journals only what some consumer wants and long-polls readers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofleet.domain.consumers import (
    MAX_FILTERS,
    FilterSet,
    JournalEntry,
    check_consumer_name,
    check_filters,
    filter_problem,
    select,
)
from geofleet.domain.errors import Conflict, InvalidRequest, NotFound
from geofleet.domain.hlc import Clock
from geofleet.domain.records import Kind, Record
from geofleet.replication.wire import BatchError, parse_record
from geofleet.services.consumers import Consumers
from geofleet.services.journal import Journal
from geofleet.services.ledger import Ledger
from geofleet.store.journal import SqliteJournal
from geofleet.store.sqlite import SqliteStore
from tests.test_topics import reference_match


def _entry(seq: int, topic: str, payload: bytes = b"{}") -> JournalEntry:
    return JournalEntry("r1", seq, topic, "dev", 0, payload)


# -- names and filters ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a b", "x" * 129, "name\n", "a/b", "#", "é"])
def test_bad_consumer_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match="consumer name"):
        check_consumer_name(name)


@pytest.mark.parametrize("bad", [
    "", "a/#/b", "a#", "a/b+", "sport+", "a\x00b", "a/" * 8 + "x", "x" * 257,
])
def test_bad_filters_are_refused_with_the_rule(bad: str) -> None:
    assert filter_problem(bad) is not None
    with pytest.raises(InvalidRequest, match="invalid topic filter"):
        check_filters([bad])


def test_filters_are_a_bounded_non_empty_list_of_strings() -> None:
    assert check_filters(["a/#", "a/#", "+/b"]) == ["a/#", "+/b"]
    for bad in [[], "a/#", [1], None, [f"t/{i}" for i in range(MAX_FILTERS + 1)]]:
        with pytest.raises(InvalidRequest):
            check_filters(bad)


def test_a_replicated_consumer_with_bad_filters_is_refused_as_a_bad_batch() -> None:
    item = {"kind": "consumer", "key": "c", "ref": "", "origin": "r2", "hlc": Clock().now().encode(),
            "body": {"consumerName": "c", "filters": ["a/#/b"], "createdAt": 1}}
    with pytest.raises(BatchError, match="invalid consumer"):
        parse_record(item, "change 1")
    item["body"] = {"consumerName": "c", "filters": ["a/#"], "createdAt": 1}
    assert parse_record(item, "change 1").kind is Kind.CONSUMER


topic_level = st.sampled_from(["a", "b", "$x", ""])
filter_level = st.sampled_from(["a", "b", "+", "$x", ""])


@given(st.lists(topic_level, min_size=1, max_size=4),
       st.lists(st.lists(filter_level, min_size=1, max_size=4), min_size=1, max_size=3), st.booleans())
def test_filter_set_agrees_with_mqtt_matching(topic: list[str], filters: list[list[str]], hash_end: bool) -> None:
    text = ["/".join(f) + ("/#" if hash_end else "") for f in filters]
    assert FilterSet(text).matches("/".join(topic)) == any(reference_match("/".join(topic), f) for f in text)


def test_select_moves_past_rows_that_do_not_match_and_stops_at_the_limit() -> None:
    rows = [_entry(1, "x"), _entry(2, "a/1"), _entry(3, "y"), _entry(4, "a/2"), _entry(5, "a/3")]
    chosen, last = select(rows, FilterSet(["a/+"]), limit=2)
    assert [e.seq for e in chosen] == [2, 4]
    assert last == 4
    chosen, last = select(rows[:1], FilterSet(["a/+"]), limit=2)
    assert (chosen, last) == ([], 1), "a page of non-matching rows still moves the reader on"
    chosen, last = select([_entry(1, "a/1", b"x" * 100), _entry(2, "a/2", b"y" * 100)], FilterSet(["a/+"]), 10,
                          max_bytes=150)
    assert ([e.seq for e in chosen], last) == ([1], 1), "the byte bound stops a page, after at least one"


def test_entries_keep_text_and_binary_payloads_on_the_wire() -> None:
    for payload in [b'{"v":1}', b"\xff\x00binary"]:
        entry = _entry(7, "a/b", payload)
        wire = entry.to_json()
        assert ("payload" in wire) == (payload == b'{"v":1}')
        assert JournalEntry.from_json(wire) == entry
        assert wire["id"] == "r1:7"


# -- the journal file ----------------------------------------------------------------------

def test_sequence_survives_pruning_and_reopening(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", "r1")
    seqs = [journal.append("a/b", "dev", 1000 + i, b"p") for i in range(10)]
    assert seqs == list(range(1, 11))
    assert journal.prune(older_than_ms=0, keep_rows=4, keep_bytes=10**9) == 6
    journal.close()
    journal = SqliteJournal(tmp_path / "journal.db", "r1")
    assert journal.first() == 7
    assert journal.head() == 10
    assert journal.size() == 4
    assert journal.append("a/b", "dev", 2000, b"p") == 11, "a sequence number is never reused"
    assert journal.dropped() == 6, "what retention dropped is counted, across restarts"


def test_retention_drops_by_age_oldest_first(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", "r1")
    for ts in [100, 200, 300, 400]:
        journal.append("a/b", "dev", ts, b"p")
    assert journal.prune(older_than_ms=300, keep_rows=1000, keep_bytes=10**9) == 2
    assert [e.seq for e in journal.entries(0, 10)] == [3, 4]
    assert journal.prune(older_than_ms=10_000, keep_rows=1000, keep_bytes=10**9) == 2
    assert journal.first() == journal.head() + 1 == 5


def test_retention_bounds_the_payload_bytes_held(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", "r1")
    for size in [100, 200, 300, 400]:
        journal.append("a/b", "dev", 1, b"x" * size)
    assert journal.held_bytes() == 1000
    assert journal.prune(older_than_ms=0, keep_rows=1000, keep_bytes=750) == 2, "the oldest two go"
    assert journal.held_bytes() == 700
    journal.close()
    journal = SqliteJournal(tmp_path / "journal.db", "r1")  # the running sum survives a restart
    journal.append("a/b", "dev", 1, b"x" * 50)
    assert journal.held_bytes() == 750
    assert journal.prune(older_than_ms=0, keep_rows=1000, keep_bytes=0) == 3
    assert journal.held_bytes() == 0


def test_offsets_are_per_consumer(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "journal.db", "r1")
    assert journal.offset("c") == 0
    journal.set_offset("c", 5, 1)
    journal.set_offset("d", 2, 1)
    journal.forget("d")
    assert (journal.offset("c"), journal.offset("d")) == (5, 0)


# -- the service ---------------------------------------------------------------------------

def _service(tmp_path: Path, **kw: float) -> tuple[Journal, Consumers, Ledger]:
    ledger = Ledger(SqliteStore(tmp_path / "store.db"), Clock(), "r1")
    return Journal(SqliteJournal(tmp_path / "journal.db", "r1"), ledger, **kw), Consumers(ledger), ledger  # type: ignore[arg-type]


def test_only_what_some_consumer_wants_is_journaled(tmp_path: Path) -> None:
    journal, consumers, ledger = _service(tmp_path)
    assert journal.record("dev", "dt/dev/t", b"1") is None, "no consumer: nothing kept"
    consumers.put("billing", ["dt/+/t"])
    assert journal.record("dev", "dt/dev/t", b"2") == 1
    assert journal.record("dev", "cmd/dev", b"3") is None
    # a consumer that arrives by replication counts as soon as it is applied
    ledger.merge(Record(Kind.CONSUMER, "audit", {"consumerName": "audit", "filters": ["cmd/#"], "createdAt": 1},
                        Clock().now(), "r2"))
    assert journal.record("dev", "cmd/dev", b"4") == 2
    consumers.delete("audit")
    assert journal.record("dev", "cmd/dev", b"5") is None


def test_consumers_are_bounded_validated_and_keep_their_creation_time(tmp_path: Path) -> None:
    _, consumers, _ = _service(tmp_path)
    first, created = consumers.put("c", ["a/#"])
    again, created_again = consumers.put("c", ["b/#"])
    assert created
    assert not created_again
    assert again["createdAt"] == first["createdAt"]
    assert again["filters"] == ["b/#"]
    with pytest.raises(InvalidRequest):
        consumers.put("bad name", ["a/#"])
    with pytest.raises(NotFound):
        consumers.get("nobody")
    for i in range(99):
        consumers.put(f"c{i}", ["a/#"])
    with pytest.raises(Conflict, match="the most it may have"):
        consumers.put("one-too-many", ["a/#"])


def test_read_returns_the_consumers_entries_and_long_polls(tmp_path: Path) -> None:
    journal, consumers, _ = _service(tmp_path)
    consumers.put("billing", ["dt/+/usage"])
    consumers.put("audit", ["cmd/#"])
    journal.record("d1", "dt/d1/usage", b'{"kwh":1}')
    journal.record("d1", "cmd/d1", b"{}")

    async def scenario() -> None:
        page = await journal.read("billing", 0, 10, 0)
        assert [(e.seq, e.topic, e.client_id) for e in page.entries] == [(1, "dt/d1/usage", "d1")]
        page = await journal.read("billing", page.next, 10, 0)
        assert (page.entries, page.next) == ([], 2), "rows of other consumers move the position on"
        started = time.monotonic()
        waiting = asyncio.create_task(journal.read("billing", page.next, 10, 5))
        await asyncio.sleep(0)  # the reader is now waiting
        journal.record("d2", "dt/d2/usage", b"{}")
        page = await waiting
        assert [e.seq for e in page.entries] == [3]
        assert time.monotonic() - started < 2
        started = time.monotonic()
        page = await journal.read("billing", page.next, 10, 0.2)
        assert page.entries == []
        assert time.monotonic() - started >= 0.2, "an empty read waits, bounded"

    asyncio.run(scenario())


def test_bad_reads_and_commits_are_clear_errors(tmp_path: Path) -> None:
    journal, consumers, _ = _service(tmp_path)
    consumers.put("c", ["a/#"])
    journal.record("d", "a/b", b"")

    async def read(name: str, after: int, limit: int, wait: float) -> None:
        await journal.read(name, after, limit, wait)

    with pytest.raises(NotFound):
        asyncio.run(read("nobody", 0, 10, 0))
    for after, limit, wait in [(-1, 10, 0), (0, 0, 0), (0, 10_000, 0), (0, 10, 60), (5, 10, 0)]:
        with pytest.raises(InvalidRequest):
            asyncio.run(read("c", after, limit, wait))
    with pytest.raises(InvalidRequest, match="outside the journal"):
        journal.commit("c", 2)
    assert journal.commit("c", 1) == 1
    assert journal.offset("c") == 1


def test_a_reader_behind_retention_is_told_what_it_lost(tmp_path: Path) -> None:
    journal, consumers, _ = _service(tmp_path, retention_rows=3)
    consumers.put("c", ["a/#"])
    for i in range(10):
        journal.record("d", f"a/{i}", b"")
    assert journal.prune() == 7
    page = asyncio.run(journal.read("c", 2, 100, 0))
    assert page.dropped == 5
    assert [e.seq for e in page.entries] == [8, 9, 10]
    assert b"geofleet_journal_dropped_total" in journal.metrics()
    assert journal.report()["dropped"] == 7


def test_a_new_consumer_starts_at_the_head_of_the_journal(tmp_path: Path) -> None:
    """Entries kept for other consumers before it existed are not its history."""
    journal, consumers, _ = _service(tmp_path)
    consumers.put("first", ["a/#"])
    journal.record("d", "a/1", b"")
    consumers.put("second", ["a/#"])
    journal.record("d", "a/2", b"")
    assert (journal.offset("first"), journal.offset("second")) == (0, 1)
    consumers.put("second", ["a/+"])  # new filters: same consumer, same offset
    assert journal.offset("second") == 1
    page = asyncio.run(journal.read("second", journal.offset("second"), 10, 0))
    assert [e.topic for e in page.entries] == ["a/2"]
