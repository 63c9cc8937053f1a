"""An idle GPU-hour budget chooses its exchange rate every hour from the last day's gaps (`policies.idle_budget`)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import currency
from policies import idle_budget as ib
from policies.types import ScalingSpec

T0 = 1_800_000_000.0 - 1_800_000_000.0 % 3600
SPEC = ScalingSpec(name="m", expected_cold_start_s=120.0, reload_idle_s=60.0)


def priced(per_hour_s: float, rate: float) -> np.ndarray:
    """A synthetic step curve: a pool whose gaps, held at rate r, cost `per_hour_s` x (r / 1e-4)^0.3."""
    rates = np.append(ib.RATES, rate)
    return per_hour_s * (rates / 1e-4) ** 0.3


def test_spending_stays_within_the_budget_on_a_stream() -> None:
    """Hour after hour the pool spends what its gaps cost at the rate in force, plus idle the histories
    do not price (inside bursts, pre-warms); after the first day the last day's idle stays within the
    budget, and not far below it (the grid's step is 10^(1/12) in rate)."""
    budget_gpu_h = 48.0
    state = ib.new_state(currency.DEFAULT_RATE, T0)
    idle_per_hour: list[float] = []
    for hour in range(6 * 24):
        swing = 1.0 + 0.5 * np.sin(2 * np.pi * hour / 24)  # busier by day: the gaps priced move too
        curve = priced(600.0 * swing, state.rate)
        idle_s = float(curve[-1]) + 900.0 * swing
        state = ib.step(ib.record_idle(state, idle_s), T0 + (hour + 1) * 3600.0, budget_gpu_h, curve)
        idle_per_hour.append(idle_s)
    for end in range(48, len(idle_per_hour) + 1, 6):
        day_gpu_h = sum(idle_per_hour[end - 24 : end]) / 3600.0
        assert 0.8 * budget_gpu_h <= day_gpu_h <= 1.05 * budget_gpu_h, (end, day_gpu_h)


def test_it_does_not_wind_up_without_history() -> None:
    """Two days with no gap recorded and nothing spent leave the rate at the grid's top; the first hour
    whose gaps would overspend at it brings the rate down at once (no integrated multiplier to unwind)."""
    state = ib.new_state(currency.DEFAULT_RATE, T0)
    empty = np.zeros(ib.NRATES + 1)
    for hour in range(48):
        state = ib.step(state, T0 + (hour + 1) * 3600.0, 24.0, empty)
    assert state.rate == pytest.approx(float(ib.RATES[-1]))
    curve = priced(36_000.0, state.rate)  # 10 GPU-h at the floor, 158 at the top, against 24 a day
    state = ib.step(ib.record_idle(state, float(curve[-1])), T0 + 49 * 3600.0, 24.0, curve)
    chosen = int(np.flatnonzero(np.isclose(ib.RATES, state.rate))[0])
    assert curve[chosen] <= 24.0 * 3600.0 < curve[chosen + 1]
    assert state.rate < 2e-3


def test_the_first_day_is_pro_rata_and_the_residual_counts() -> None:
    curve = np.append(np.linspace(0.0, 7200.0, ib.NRATES), 0.0)  # 0 .. 2 GPU-h over the grid
    one_hour = ib.step(ib.new_state(0.03, T0), T0 + 3600.0, 24.0, curve)  # 1 GPU-h allowed in the first hour
    assert one_hour.rate == pytest.approx(float(ib.RATES[(ib.NRATES - 1) // 2]))
    # The same hour with 0.5 GPU-h measured beyond what the histories priced: half an hour less to spend.
    extra = ib.step(ib.record_idle(ib.new_state(0.03, T0), 1800.0), T0 + 3600.0, 24.0, curve)
    assert extra.rate == pytest.approx(float(ib.RATES[(ib.NRATES - 1) // 4]))
    assert extra.steps[-1].residual_s == pytest.approx(1800.0)


def test_a_state_keeps_one_day_of_steps() -> None:
    state = ib.new_state(0.03, T0)
    for hour in range(3 * 24):
        state = ib.record_idle(state, 3600.0)  # one GPU idle all the time
        state = ib.step(state, T0 + (hour + 1) * 3600.0, 24.0, np.zeros(ib.NRATES + 1))
    assert len(state.steps) == ib.STEPS
    assert all(len(s.curve_s) == ib.NRATES for s in state.steps)
    assert ib.spent_gpu_h(state, T0 + 72 * 3600.0) == pytest.approx(24.0)
    assert ib.due(state, T0 + 72 * 3600.0 + 3599) is False
    assert ib.due(state, T0 + 73 * 3600.0) is True
    with pytest.raises(ValueError, match="entries"):
        ib.step(state, T0 + 73 * 3600.0, 24.0, np.zeros(ib.NRATES))


def test_a_step_curve_prices_each_models_new_gaps_with_its_own_windows() -> None:
    counts = np.zeros(currency.CELLS)
    counts[3] = 5.0  # five gaps of bin 3 in bucket 0
    counts[currency.NBINS + 20] = 2.0  # two long gaps in bucket 1
    hist = currency.observe(currency.empty_history(), np.flatnonzero(counts), counts[counts > 0], [100.0, 40.0])
    other = currency.observe(currency.empty_history(), [7], [3.0], [30.0])
    dropped = -counts  # a history that shrank records no gaps: nothing priced
    got = ib.step_curve_s([(hist, SPEC, counts), (None, SPEC, np.zeros(currency.CELLS)), (other, SPEC, dropped)], 0.05)
    want = currency.spend_curve_s(hist, SPEC, np.append(ib.RATES, 0.05), counts=counts)
    assert got.shape == (ib.NRATES + 1,)
    np.testing.assert_allclose(got, want)
    assert got[-1] > 0 and np.all(np.diff(got[:-1]) >= -1e-9)  # holding longer as idle time gets cheaper
