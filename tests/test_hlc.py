"""Hybrid logical clocks: the encoding sorts like the clock, and a clock never repeats or goes
back, whatever the wall clock does and whatever it observes from other regions."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofleet.domain.hlc import HLC, ZERO, Clock

MAX_WALL = 10**13 - 1  # 13 digits of milliseconds
MAX_LOGICAL = 10**6 - 1  # 6 digits of logical counter

hlcs = st.builds(HLC, st.integers(0, MAX_WALL), st.integers(0, MAX_LOGICAL))


class FakeWall:
    """An injectable wall clock that returns whatever the test says it reads."""

    def __init__(self, readings: Iterable[int] = ()) -> None:
        self.readings = list(readings)
        self.value = self.readings[0] if self.readings else 0

    def __call__(self) -> int:
        if self.readings:
            self.value = self.readings.pop(0)
        return self.value


# --- encoding ---------------------------------------------------------------------------------


def test_encode_is_fixed_width_and_zero_padded() -> None:
    assert HLC(1, 2).encode() == "0000000000001.000002"
    assert str(HLC(1_700_000_000_000, 42)) == "1700000000000.000042"
    assert ZERO.encode() == "0000000000000.000000"


@given(hlcs)
def test_encode_decode_round_trip(stamp: HLC) -> None:
    text = stamp.encode()
    assert len(text) == 20
    assert HLC.decode(text) == stamp


@given(hlcs, hlcs)
def test_string_order_equals_hlc_order(a: HLC, b: HLC) -> None:
    assert (a.encode() < b.encode()) == (a < b)
    assert (a.encode() == b.encode()) == (a == b)


def test_string_order_examples() -> None:
    stamps = [HLC(2, 0), HLC(1, 999_999), HLC(10, 0), HLC(1, 10), HLC(1, 9), ZERO]
    assert sorted(s.encode() for s in stamps) == [s.encode() for s in sorted(stamps)]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "0000000000001",  # no logical part
        "0000000000001.",  # empty logical part
        ".000001",  # empty wall part
        "1.1",  # not fixed width
        "000000000001.000001",  # 12-digit wall
        "00000000000001.000001",  # 14-digit wall
        "0000000000001.00001",  # 5-digit logical
        "0000000000001.0000001",  # 7-digit logical
        "0000000000001.000001.000001",  # too many parts
        "000000000000a.000001",
        "0000000000001.00000x",
        "0000000000001,000001",
    ],
)
def test_decode_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not an HLC timestamp"):
        HLC.decode(text)


@pytest.mark.parametrize(
    "text",
    [
        "+000000000001.000000",
        "-000000000001.000000",
        " 000000000001.000000",
        "00000000000_1.000000",
        "0000000000001.00000\n",
        "000000000000\u0661.000000",  # ARABIC-INDIC DIGIT ONE
    ],
)
def test_decode_rejects_non_canonical_digits(text: str) -> None:
    with pytest.raises(ValueError, match="not an HLC timestamp"):
        HLC.decode(text)


# --- Clock.now ----------------------------------------------------------------------------------


def test_now_follows_the_wall_clock_when_it_moves_forward() -> None:
    clock = Clock(FakeWall([100, 105, 200]))
    assert [clock.now(), clock.now(), clock.now()] == [HLC(100, 0), HLC(105, 0), HLC(200, 0)]
    assert clock.last == HLC(200, 0)


def test_now_is_strictly_monotonic_when_the_wall_clock_stands_still() -> None:
    clock = Clock(FakeWall([100]))
    stamps = [clock.now() for _ in range(5)]
    assert stamps == [HLC(100, i) for i in range(5)]
    assert all(a < b for a, b in itertools.pairwise(stamps))


def test_now_is_strictly_monotonic_when_the_wall_clock_goes_backwards() -> None:
    clock = Clock(FakeWall([1000, 400, 300, 999, 1000, 1001]))
    stamps = [clock.now() for _ in range(6)]
    assert stamps == [HLC(1000, 0), HLC(1000, 1), HLC(1000, 2), HLC(1000, 3), HLC(1000, 4), HLC(1001, 0)]


def test_now_continues_after_the_start_stamp() -> None:
    clock = Clock(FakeWall([5]), start=HLC(50, 7))
    assert clock.now() == HLC(50, 8)


def test_logical_overflow_in_now_rolls_into_the_next_millisecond() -> None:
    clock = Clock(FakeWall([5]), start=HLC(5, MAX_LOGICAL - 1))
    assert clock.now() == HLC(5, MAX_LOGICAL)
    assert clock.now() == HLC(6, 0)
    assert clock.now() == HLC(6, 1)


def test_default_wall_clock_is_real_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = Clock().now()
    after = time.time_ns() // 1_000_000
    assert before <= stamp.wall_ms <= after


# --- Clock.observe ------------------------------------------------------------------------------


def test_observe_moves_past_a_remote_stamp_from_the_future() -> None:
    clock = Clock(FakeWall([100]))
    local = clock.now()
    remote = HLC(500, 3)
    seen = clock.observe(remote)
    assert seen > remote
    assert seen > local
    assert seen == HLC(500, 4)
    assert clock.now() > seen


def test_observe_of_an_old_remote_stamp_still_moves_past_local_stamps() -> None:
    clock = Clock(FakeWall([100]))
    local = [clock.now(), clock.now()]
    remote = HLC(10, 999)
    seen = clock.observe(remote)
    assert seen > remote
    assert all(seen > stamp for stamp in local)
    assert seen == HLC(100, 2)


def test_observe_with_equal_wall_times_takes_the_larger_logical() -> None:
    clock = Clock(FakeWall([100]), start=HLC(100, 3))
    assert clock.observe(HLC(100, 9)) == HLC(100, 10)
    assert clock.observe(HLC(100, 2)) == HLC(100, 11)


def test_observe_uses_the_wall_clock_when_it_is_ahead_of_both() -> None:
    clock = Clock(FakeWall([1000]), start=HLC(100, 3))
    assert clock.observe(HLC(500, 9)) == HLC(1000, 0)


def test_observe_when_wall_clock_equals_the_remote_wall() -> None:
    clock = Clock(FakeWall([500]), start=HLC(100, 3))
    assert clock.observe(HLC(500, 9)) == HLC(500, 10)


def test_logical_overflow_in_observe_rolls_into_the_next_millisecond() -> None:
    remote_full = Clock(FakeWall([0]), start=HLC(5, 3))
    assert remote_full.observe(HLC(5, MAX_LOGICAL)) == HLC(6, 0)

    local_full = Clock(FakeWall([0]), start=HLC(5, MAX_LOGICAL))
    assert local_full.observe(HLC(1, 0)) == HLC(6, 0)

    remote_ahead_full = Clock(FakeWall([0]), start=HLC(1, 0))
    assert remote_ahead_full.observe(HLC(9, MAX_LOGICAL)) == HLC(10, 0)


# --- properties ---------------------------------------------------------------------------------

walls = st.integers(0, 2_000)
# Logical counters near both ends, so that equal-millisecond ties and overflow both come up.
logicals = st.one_of(st.integers(0, 5), st.integers(MAX_LOGICAL - 2, MAX_LOGICAL))
small_hlcs = st.builds(HLC, walls, logicals)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("now"), walls, st.none()),
        st.tuples(st.just("observe"), walls, small_hlcs),
    ),
    min_size=1,
    max_size=60,
)


@given(start=small_hlcs, ops=operations)
def test_any_sequence_of_now_and_observe_is_strictly_increasing(
    start: HLC, ops: list[tuple[str, int, HLC | None]]
) -> None:
    wall = FakeWall()
    clock = Clock(wall, start=start)
    previous = start
    for name, reading, remote in ops:
        wall.value = reading
        if remote is None:
            stamp = clock.now()
        else:
            stamp = clock.observe(remote)
            assert stamp > remote, "observe() must move past the remote stamp"
        assert stamp > previous, f"{name}() returned {stamp}, not after {previous}"
        assert stamp.wall_ms >= reading, "a stamp never lags the wall clock it read"
        assert 0 <= stamp.logical <= MAX_LOGICAL
        assert clock.last == stamp
        previous = stamp


@given(ops=operations)
def test_stamps_encode_in_issue_order(ops: list[tuple[str, int, HLC | None]]) -> None:
    wall = FakeWall()
    clock = Clock(wall)
    encoded = []
    for _, reading, remote in ops:
        wall.value = reading
        encoded.append((clock.now() if remote is None else clock.observe(remote)).encode())
    assert encoded == sorted(encoded)
    assert len(set(encoded)) == len(encoded)
