"""The provision-once guard's claim rule, without a store: first claim wins, an abandoned claim
can be taken over, a finished one answers again for its own CSR only."""

from __future__ import annotations

from geofleet.domain.guard import DEFAULT_STALE_MS, GuardEntry, claim


def test_the_first_claim_of_an_id_wins() -> None:
    assert claim(None, "f1", now_ms=5).claimed


def test_a_claim_in_progress_is_busy_for_its_csr_and_taken_for_another() -> None:
    entry = GuardEntry("f1", None, claimed_ms=1000)
    assert claim(entry, "f1", now_ms=1000 + DEFAULT_STALE_MS).state == "busy"
    taken = claim(entry, "f2", now_ms=1000 + DEFAULT_STALE_MS)
    assert (taken.state, taken.detail) == ("taken", {"fingerprint": "f1", "certificateId": None})


def test_an_abandoned_claim_is_taken_over_by_any_csr() -> None:
    entry = GuardEntry("f1", None, claimed_ms=1000)
    assert claim(entry, "f2", now_ms=1001 + DEFAULT_STALE_MS).claimed
    assert claim(entry, "f2", now_ms=1001, stale_ms=0).claimed


def test_a_finished_claim_answers_its_csr_again_and_never_expires() -> None:
    entry = GuardEntry("f1", {"certificateId": "c1"}, claimed_ms=0)
    done = claim(entry, "f1", now_ms=10 * DEFAULT_STALE_MS)
    assert (done.state, done.detail) == ("done", {"certificateId": "c1"})
    taken = claim(entry, "f2", now_ms=10 * DEFAULT_STALE_MS)
    assert taken.detail == {"fingerprint": "f1", "certificateId": "c1"}
