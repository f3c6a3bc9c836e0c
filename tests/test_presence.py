"""The presence directory's fencing rules: connects replace only older sessions, disconnects end
only the session they name, out-of-order and repeated events converge, and ``locate`` picks the
newest connected session across regions (ignoring regions that are down)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofleet.domain.hlc import HLC
from geofleet.domain.presence import Session, entry_key, is_superseded, locate, on_connect, on_disconnect

Connect = tuple[str, Session]
Disconnect = tuple[str, str, HLC]
Event = Connect | Disconnect


def session(sid: str, at: int, region: str = "us-east-1", connected: bool = True) -> Session:
    return Session("dev-1", region, sid, HLC(at), connected, "10.0.0.1")


def connect(s: Session) -> Connect:
    return ("connect", s)


def disconnect(sid: str, at: int) -> Disconnect:
    return ("disconnect", sid, HLC(at))


def apply(entry: Session | None, event: Event) -> Session | None:
    """One lifecycle event; the entry stays as it is when the rule says the event changes nothing."""
    if len(event) == 2:
        changed = on_connect(entry, event[1])
    else:
        changed = on_disconnect(entry, event[1], event[2], "CLIENT_INITIATED")
    return entry if changed is None else changed


def fold(events: list[Event]) -> Session | None:
    return functools.reduce(apply, events, None)


S1, S2 = session("s1", 10), session("s2", 20)
ENDED = Session("dev-1", "us-east-1", "s1", HLC(10), False, "10.0.0.1", HLC(15), "CLIENT_INITIATED")


def test_entry_key_is_device_and_region() -> None:
    assert entry_key("dev-1", "eu-west-1") == "dev-1|eu-west-1"


def test_late_disconnect_of_an_old_session_leaves_the_newer_one_connected() -> None:
    entry = fold([connect(S1), connect(S2), disconnect("s1", 30)])
    assert entry == S2
    assert entry.connected


def test_disconnect_of_the_recorded_session_ends_it() -> None:
    assert fold([connect(S1), disconnect("s1", 15)]) == ENDED


def test_duplicate_connect_changes_nothing() -> None:
    assert on_connect(S1, S1) is None
    assert fold([connect(S1), connect(S1)]) == S1


def test_duplicate_connect_after_disconnect_does_not_revive_the_session() -> None:
    assert fold([connect(S1), disconnect("s1", 15), connect(S1)]) == ENDED


def test_older_connect_arriving_late_is_ignored() -> None:
    assert on_connect(S2, S1) is None
    assert fold([connect(S2), connect(S1)]) == S2


def test_connect_ties_on_hlc_are_broken_by_region_then_session_id() -> None:
    a, b = session("s-a", 10), session("s-b", 10)
    assert on_connect(a, b) == b
    assert on_connect(b, a) is None


def test_disconnect_with_no_entry_or_already_ended_changes_nothing() -> None:
    assert on_disconnect(None, "s1", HLC(5), None) is None
    assert on_disconnect(ENDED, "s1", HLC(16), None) is None


def test_disconnect_arriving_before_its_connect_is_dropped() -> None:
    assert fold([disconnect("s1", 15)]) is None
    assert fold([disconnect("s1", 15), connect(S1)]) == S1, "the fencing rule has nothing to end yet"


EVENTS: list[Event] = [connect(session("s0", 5)), disconnect("s0", 8), connect(S1), connect(S1),
                       disconnect("s1", 15), connect(S2), connect(S2)]


@given(st.permutations(EVENTS))
def test_every_order_of_the_events_gives_the_same_entry(events: list[Event]) -> None:
    assert fold(events) == S2


def test_a_disconnect_of_a_session_not_recorded_never_clears_the_entry() -> None:
    """A disconnect that cannot be placed is ignored, never guessed: the one it would clear may
    be a newer session (a reconnect that closed an old one). A region's own events reach its
    directory in order, so a disconnect never comes before its own connect there."""
    newer = fold([connect(S2), disconnect("s1", 25)])
    assert newer is not None
    assert newer.session_id == "s2"
    assert newer.connected


US, EU = session("s-us", 10, "us-east-1"), session("s-eu", 20, "eu-west-1")


def test_locate_reports_the_newer_region_as_current_and_the_older_as_duplicate() -> None:
    where = locate("dev-1", [US, EU])
    assert where.current == EU
    assert where.duplicates == (US,)
    assert where.to_json()["region"] == "eu-west-1"
    assert where.to_json()["connected"] is True


def test_is_superseded_only_for_the_older_session() -> None:
    assert is_superseded(US, [US, EU])
    assert not is_superseded(EU, [US, EU])


def test_is_superseded_ignores_disconnected_sessions_and_the_same_region() -> None:
    assert not is_superseded(US, [session("s-eu", 20, "eu-west-1", connected=False)])
    assert not is_superseded(US, [session("s-us2", 20, "us-east-1")])


def test_locate_skips_sessions_in_down_regions() -> None:
    where = locate("dev-1", [US, EU], down=frozenset({"eu-west-1"}))
    assert where.current == US
    assert where.duplicates == ()


def test_locate_offline_device_has_no_current_but_a_last_seen() -> None:
    where = locate("dev-1", [ENDED])
    assert where.current is None
    assert where.last == ENDED
    assert where.to_json()["connected"] is False
    assert locate("dev-1", []).last is None


@pytest.mark.parametrize("s", [S1, ENDED, Session("d", "r", "x", HLC(1, 2), True)])
def test_session_json_round_trip(s: Session) -> None:
    assert Session.from_json(s.to_json()) == s
