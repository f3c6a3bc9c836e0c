"""Recognising a message seen a moment ago (the device's and the application's dedup)."""

from __future__ import annotations

from geofleet.domain.dedup import RecentMessages


def test_the_same_topic_and_payload_is_a_duplicate_until_the_window_passes() -> None:
    recent = RecentMessages(10, window_s=60)
    assert recent.first_time("dt/a", b"1", now=0.0)
    assert not recent.first_time("dt/a", b"1", now=30.0)
    assert recent.first_time("dt/b", b"1", now=30.0)
    assert recent.first_time("dt/a", b"2", now=30.0)
    assert recent.first_time("dt/a", b"1", now=61.0)


def test_only_the_last_messages_up_to_the_limit_are_remembered() -> None:
    recent = RecentMessages(2)
    for payload in (b"1", b"2", b"3"):
        assert recent.first_time("t", payload, now=0.0)
    assert not recent.first_time("t", b"3", now=0.0)
    assert recent.first_time("t", b"1", now=0.0), "the oldest was forgotten"
