"""What releasing a replica costs in user-seconds of waiting: the GPU budget's price (`policies.eviction`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from policies import currency
from policies.combine import POLICY_MIXES, decide
from policies.eviction import idle_release_wait_s, release_waits_s
from policies.forecast import new_forecast, observe_slot
from policies.types import Decision, GapHistory, LoadSnapshot, ModelState, Reason, ScalingSpec

MONDAY_S = 4 * 86_400.0 + 10 * 3600.0
"""1970-01-05 10:00 UTC, a Monday: time-of-week bucket 2."""
SPEC = ScalingSpec(name="m", expected_cold_start_s=150.0, reload_idle_s=90.0, target_concurrency=2.0)


def history(gaps_s: list[float], wait_per_gap_s: float) -> GapHistory:
    cells = [currency.cell(MONDAY_S, g) for g in gaps_s]
    return currency.observe(currency.empty_history(), cells, [1.0] * len(cells), [wait_per_gap_s] * len(cells))


BURSTY = history([90.0, 120.0, 150.0, 200.0, 240.0, 300.0] * 20, wait_per_gap_s=400.0)
"""Short gaps with bursts behind them: a release soon after activity makes many requests wait."""
SPARSE = history([6 * 3600.0, 9 * 3600.0, 20 * 3600.0] * 20, wait_per_gap_s=150.0)
"""Gaps of hours: the next request is unlikely to come soon, and comes alone."""


@pytest.mark.parametrize(
    ("gaps", "idle_s", "window_s", "low", "high"),
    [
        (BURSTY, 60.0, 900.0, 300.0, 450.0),  # nearly every bursty gap ends within the window, ~400 user-s each
        (SPARSE, 60.0, 900.0, 1.0, 30.0),  # few sparse gaps end within 15 minutes (the prior's share)
        (BURSTY, 900.0, 900.0, 0.0, 0.0),  # the window is over: holding on saves nothing
        (SPARSE, 60.0, 60.0, 0.0, 0.0),
        (None, 60.0, 900.0, 100.0, 5000.0),  # no history: the population prior's gaps and waits
    ],
)
def test_release_wait_of_an_idle_replica(
    gaps: GapHistory | None, idle_s: float, window_s: float, low: float, high: float
) -> None:
    got = idle_release_wait_s(gaps, SPEC, idle_s=idle_s, window_s=window_s, last_activity_s=MONDAY_S)
    assert low <= got <= high


def test_a_longer_window_is_dearer_to_cut_short() -> None:
    """The window is priced at the model's rate: a rate that holds longer makes its replica dearer to evict."""
    waits = [
        idle_release_wait_s(SPARSE, SPEC, idle_s=60.0, window_s=w, last_activity_s=MONDAY_S)
        for w in (300.0, 3600.0, 8 * 3600.0, 30 * 3600.0)
    ]
    assert waits == sorted(waits) and waits[-1] > 10 * max(waits[0], 1e-9)


def test_release_waits_per_replica() -> None:
    held = Decision(replicas=3, reasons=(Reason("reactive", 3, "load"),), keepalive_s=900.0)
    load = LoadSnapshot(queue_depth=1, in_flight=4.0, held_replicas=3, ready_replicas=3, last_activity_s=MONDAY_S)
    waits = release_waits_s(held, load, SPEC, MONDAY_S + 10.0, gaps=BURSTY)
    # 5 requests, 2 per replica: the first two replicas each carry 2, the third the fifth; the first
    # replica's release also delays the burst a cold start makes wait.
    burst_s = currency.wait_per_cold_s(BURSTY, 150.0)
    assert waits == pytest.approx((2 * 150.0 + burst_s, 2 * 150.0, 1 * 150.0))
    assert burst_s > currency.wait_per_cold_s(SPARSE, 150.0)
    idle = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=MONDAY_S)
    one = Decision(replicas=1, reasons=(Reason("idle-to-zero", 1, "held"),), keepalive_s=900.0)
    (bursty,) = release_waits_s(one, idle, SPEC, MONDAY_S + 60.0, gaps=BURSTY)
    (sparse,) = release_waits_s(one, idle, SPEC, MONDAY_S + 60.0, gaps=SPARSE)
    assert bursty > 20 * sparse


def test_a_prewarm_is_priced_by_its_chance_of_demand() -> None:
    fc = new_forecast(600.0)
    for day in range(7):  # demand every day in the slot after MONDAY_S's
        for slot in range(-2, 3):
            at_s = MONDAY_S + (day - 7) * 86_400.0 + slot * 600.0
            fc = observe_slot(fc, at_s, 5.0 if slot == 1 else 0.0)
    rate = 1.0
    state = ModelState(
        spec=SPEC,
        load=LoadSnapshot(),
        forecast=fc,
        mix=replace(POLICY_MIXES["slurmless"], exchange_rate=rate),
        gaps=BURSTY,
    )
    now_s = MONDAY_S + 600.0 - SPEC.expected_cold_start_s
    decision = decide(state, now_s)
    assert decision.replicas == 1 and any(r.policy == "forecast" and r.replicas for r in decision.reasons)
    (wait_s,) = release_waits_s(decision, LoadSnapshot(), SPEC, now_s, gaps=BURSTY, forecast=fc)
    assert wait_s == pytest.approx(currency.wait_per_cold_s(BURSTY, SPEC.expected_cold_start_s), rel=0.35)
    assert release_waits_s(decision, LoadSnapshot(), SPEC, now_s, gaps=BURSTY, forecast=None) == (0.0,)
