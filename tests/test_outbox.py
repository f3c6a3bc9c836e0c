"""The device outbox (in memory and on disk): order kept, ack removes, bounded without dropping,
the disk outbox survives a restart. (The reconnect backoff and endpoint choice are in
test_failover_policy.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from geofleet.device.outbox import DiskOutbox, MemoryOutbox, Outbox, OutboxFull, Pending

MakeOutbox = Callable[..., Outbox]


@pytest.fixture(params=["memory", "disk"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeOutbox]:
    opened: list[DiskOutbox] = []

    def factory(limit: int = 10_000) -> Outbox:
        if request.param == "memory":
            return MemoryOutbox(limit)
        opened.append(DiskOutbox(tmp_path / "outbox.db", limit))
        return opened[-1]

    yield factory
    for outbox in opened:
        outbox.close()


def fill(outbox: Outbox, n: int) -> list[int]:
    return [outbox.put(f"t/{i}", f"m{i}".encode()) for i in range(n)]


def test_pending_returns_messages_oldest_first(make: MakeOutbox) -> None:
    outbox = make()
    ids = fill(outbox, 5)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert outbox.pending() == [Pending(i, f"t/{n}", f"m{n}".encode()) for n, i in enumerate(ids)]
    assert [m.id for m in outbox.pending(limit=2)] == ids[:2]


def test_ack_removes_only_that_message(make: MakeOutbox) -> None:
    outbox = make()
    ids = fill(outbox, 3)
    outbox.ack(ids[1])
    assert [m.id for m in outbox.pending()] == [ids[0], ids[2]]
    assert len(outbox) == 2


def test_len_counts_unacknowledged_messages(make: MakeOutbox) -> None:
    outbox = make()
    assert len(outbox) == 0
    ids = fill(outbox, 4)
    assert len(outbox) == 4
    for i in ids:
        outbox.ack(i)
    assert len(outbox) == 0
    assert outbox.pending() == []


def test_acking_an_unknown_or_already_acked_id_is_harmless(make: MakeOutbox) -> None:
    outbox = make()
    [first] = fill(outbox, 1)
    outbox.ack(9_999)
    outbox.ack(first)
    outbox.ack(first)
    assert len(outbox) == 0
    assert outbox.pending() == []
    outbox.put("t", b"after")
    assert len(outbox) == 1


def test_full_outbox_refuses_new_messages_and_drops_nothing(make: MakeOutbox) -> None:
    outbox = make(limit=3)
    ids = fill(outbox, 3)
    with pytest.raises(OutboxFull, match="3 messages await acknowledgement: the outbox is full"):
        outbox.put("t/overflow", b"x")
    assert [m.id for m in outbox.pending()] == ids
    assert len(outbox) == 3


def test_ack_frees_room_in_a_full_outbox(make: MakeOutbox) -> None:
    outbox = make(limit=2)
    ids = fill(outbox, 2)
    outbox.ack(ids[0])
    new = outbox.put("t/new", b"n")
    assert new > ids[1]
    assert [m.id for m in outbox.pending()] == [ids[1], new]


def test_disk_outbox_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    before = DiskOutbox(path)
    ids = fill(before, 4)
    before.ack(ids[0])
    before.close()

    after = DiskOutbox(path)
    try:
        assert len(after) == 3
        assert after.pending() == [Pending(i, f"t/{n}", f"m{n}".encode()) for n, i in enumerate(ids) if n > 0]
        later = after.put("t/later", b"later")
        assert later > max(ids)
    finally:
        after.close()


def test_disk_outbox_never_reuses_ids_even_after_everything_is_acked(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    before = DiskOutbox(path)
    ids = fill(before, 3)
    for i in ids:
        before.ack(i)
    before.close()
    after = DiskOutbox(path)
    try:
        assert len(after) == 0
        assert after.put("t", b"x") > max(ids)
    finally:
        after.close()


def test_disk_outbox_limit_counts_messages_left_from_before_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    before = DiskOutbox(path)
    fill(before, 2)
    before.close()
    after = DiskOutbox(path, limit=2)
    try:
        with pytest.raises(OutboxFull):
            after.put("t", b"x")
        assert len(after) == 2
    finally:
        after.close()

