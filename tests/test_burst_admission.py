"""Admission decisions (node/admission.py): price floor, capacity, and the deadline estimate from queue
depth, warm adapters and measured speed."""

from __future__ import annotations

import pytest

from node.admission import AdmissionController, AdmissionPolicy

NOW = 1_000_000.0


def _decide(c: AdmissionController, **kw):
    args = {
        "now": NOW,
        "deadline": NOW + 60,
        "price": 10,
        "max_tokens": 100,
        "warm": True,
        "committed_jobs": 0,
        "committed_tokens": 0,
        "tokens_per_s": 0.0,
        **kw,
    }
    return c.decide(**args)


def test_price_floor_and_capacity() -> None:
    c = AdmissionController(AdmissionPolicy(min_price_wei=10, max_committed_jobs=2))
    assert _decide(c).admit
    low = _decide(c, price=9)
    assert not low.admit and "min_price_wei" in low.reason
    full = _decide(c, committed_jobs=2)
    assert not full.admit and "max_committed_jobs" in full.reason
    assert c.refused == {"price": 1, "capacity": 1}


def test_deadline_estimate_uses_queue_warmth_and_measured_speed() -> None:
    c = AdmissionController(
        AdmissionPolicy(assumed_tokens_per_s=20, cold_start_s=5, chain_round_trip_s=4, safety_factor=1.5)
    )
    # warm, empty queue: 1.5 * (100/20 + 0 + 4) = 13.5 s
    assert _decide(c, deadline=NOW + 14).admit
    assert _decide(c, deadline=NOW + 14).estimated_s == pytest.approx(13.5)
    # the same job cold: + 5 s cold start -> 21 s, too late for a 14 s deadline
    cold = _decide(c, deadline=NOW + 14, warm=False)
    assert not cold.admit and "cannot finish in time" in cold.reason
    # a queue of 900 committed tokens ahead of it: 1.5 * (1000/20 + 4) = 81 s
    assert not _decide(c, committed_jobs=3, committed_tokens=900).admit
    # the engine measured 200 tok/s: the same queue now fits
    assert _decide(c, committed_jobs=3, committed_tokens=900, tokens_per_s=200).admit


def test_measured_cold_starts_and_round_trips_replace_the_configured_guess() -> None:
    c = AdmissionController(AdmissionPolicy(cold_start_s=5, chain_round_trip_s=4, safety_factor=1.0))
    before = _decide(c, warm=False).estimated_s
    c.observe_cold_start(0.5)
    c.observe_chain_round_trip(1.0)
    after = _decide(c, warm=False).estimated_s
    assert before == pytest.approx(100 / 20 + 5 + 4) and after == pytest.approx(100 / 20 + 0.5 + 1.0)


def test_bad_policy_refused() -> None:
    with pytest.raises(ValueError, match="max_committed_jobs"):
        AdmissionController(AdmissionPolicy(max_committed_jobs=0))
    with pytest.raises(ValueError, match="safety_factor"):
        AdmissionController(AdmissionPolicy(safety_factor=0.5))
