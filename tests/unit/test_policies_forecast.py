"""The seasonal EWMA forecast: learning per slot and pre-warming ahead by the cold-start time."""

from __future__ import annotations

from policies.forecast import (
    break_even_p,
    covers,
    expected_rate_per_s,
    max_p_between,
    new_forecast,
    next_slot_start_s,
    observe_slot,
    occupancy_p,
    prewarm,
)
from policies.types import ScalingSpec, SeasonalForecast

DAY = 86_400.0
SPEC = ScalingSpec(name="m", expected_cold_start_s=150.0, cold_start_value_s=600.0)


def learn_days(days: int, busy_slots: set[int]) -> SeasonalForecast:
    fc = new_forecast(600.0, alpha=0.3)
    for d in range(days):
        for s in range(144):
            fc = observe_slot(fc, d * DAY + s * 600.0, 30.0 if s in busy_slots else 0.0)
    return fc


def test_unseen_slots_say_dont_know() -> None:
    fc = new_forecast()
    assert occupancy_p(fc, 1234.0) is None
    replicas, why, recheck = prewarm(fc, SPEC, 1234.0)
    assert replicas == 0
    assert "no history" in why
    assert recheck > 1234.0


def test_observe_is_pure() -> None:
    fc = new_forecast()
    fc2 = observe_slot(fc, 0.0, 5.0)
    assert occupancy_p(fc, 0.0) is None
    assert occupancy_p(fc2, 0.0) == 1.0
    assert expected_rate_per_s(fc2, 0.0) == 5.0 / 600.0


def test_prewarms_ahead_of_a_daily_busy_slot() -> None:
    ten_am = 60  # slot index of 10:00
    fc = learn_days(3, {ten_am})
    start_s = 3 * DAY + ten_am * 600.0
    # One expected cold start before the slot, the forecast already asks for a replica.
    assert prewarm(fc, SPEC, start_s - 120.0)[0] == 1
    assert prewarm(fc, SPEC, start_s + 300.0)[0] == 1
    # Long before it and at night, it does not.
    assert prewarm(fc, SPEC, start_s - 3600.0)[0] == 0
    assert prewarm(fc, SPEC, 3 * DAY + 3 * 3600.0)[0] == 0


def test_recheck_lands_on_slot_boundary_or_lead_before_it() -> None:
    fc = learn_days(1, set())
    now = DAY + 100.0
    _, _, recheck = prewarm(fc, SPEC, now)
    assert recheck == min(next_slot_start_s(fc, now), next_slot_start_s(fc, now + 150.0) - 150.0)
    assert now < recheck <= now + 600.0


def test_ewma_forgets_a_single_quiet_day_slowly() -> None:
    fc = learn_days(3, {10})
    fc = observe_slot(fc, 3 * DAY + 10 * 600.0, 0.0)
    p = occupancy_p(fc, 4 * DAY + 10 * 600.0)
    assert p is not None
    assert p > break_even_p(SPEC, 600.0)


def test_max_p_between_spans_slots() -> None:
    fc = learn_days(2, {5})
    assert max_p_between(fc, 2 * DAY + 3 * 600.0, 2 * DAY + 5 * 600.0 + 1.0) == 1.0
    assert max_p_between(fc, 2 * DAY, 2 * DAY + 599.0) == 0.0
    assert max_p_between(new_forecast(), 0.0, 10.0) is None


def test_covers_the_slots_it_prewarms_and_no_others() -> None:
    fc = learn_days(3, {60})
    busy_s = 3 * DAY + 60 * 600.0
    assert covers(fc, SPEC, busy_s + 10.0)
    assert not covers(fc, SPEC, busy_s - 3600.0)
    assert not covers(new_forecast(), SPEC, busy_s)
    assert not covers(fc, SPEC, busy_s + 10.0, threshold=1.01)
