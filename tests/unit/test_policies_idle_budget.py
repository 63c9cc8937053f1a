"""An idle GPU-hour budget moves its exchange rate so that idle spending tracks it (`policies.idle_budget`)."""

from __future__ import annotations

import pytest

from policies import idle_budget as ib
from policies.currency import RATE_MAX, RATE_MIN

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600


def test_spending_is_kept_per_hour_within_a_bounded_window() -> None:
    state = ib.new_state(0.03, T0)
    for minute in range(0, 3 * 24 * 60, 5):
        state = ib.record_idle(state, T0 + 60 * minute, 300.0)  # one GPU idle all the time
    assert len(state.hours) <= ib.HOURS_KEPT
    assert ib.spent_s(state, T0 + 3 * 86_400.0 - 1) == pytest.approx(86_400.0, rel=0.05)


@pytest.mark.parametrize(
    ("spent_gpu_h", "moves"),
    # Pro rata: after one hour, a budget of 24 GPU-h a day allows 1 GPU-h.
    [(2.0, "down"), (0.5, "up"), (1.0, "stays")],
)
def test_the_rate_moves_hourly_against_the_pro_rata_budget(spent_gpu_h: float, moves: str) -> None:
    state = ib.record_idle(ib.new_state(0.03, T0), T0 + 10, spent_gpu_h * 3600.0)
    assert ib.step(state, T0 + 3599, 24.0) == state  # not an hour yet
    moved = ib.step(state, T0 + 3600, 24.0)
    assert moved.updated_s == T0 + 3600
    got = "down" if moved.rate < state.rate * 0.999 else "up" if moved.rate > state.rate * 1.001 else "stays"
    assert got == moves
    assert RATE_MIN <= moved.rate <= RATE_MAX


def test_spending_tracks_the_budget_in_a_loop() -> None:
    """A pool whose idle GPUs grow with the rate (holding longer when idle time is cheaper) settles near
    its budget within a few days, from a rate far too high."""
    budget_gpu_h = 48.0
    state = ib.new_state(RATE_MAX, T0)
    per_hour: list[float] = []
    for hour in range(10 * 24):
        now_s = T0 + hour * 3600.0
        idle_gpus = 40.0 * state.rate**0.5  # GPUs held idle at this rate
        state = ib.record_idle(state, now_s + 1, idle_gpus * 3600.0)
        state = ib.step(state, now_s + 3600.0, budget_gpu_h)
        per_hour.append(idle_gpus)
    last_day = sum(per_hour[-24:])
    assert last_day == pytest.approx(budget_gpu_h, rel=0.1)
