"""Idle GPU-hour budgets: each budget's exchange rate, moved online so that idle spending tracks it.

A thin layer over `policies.currency.adjust_rate` (`tracesim/tenant_budget.py` replays these controllers
with the same step, window and gain; `tracesim/budget.py`'s `--budget` is a different controller, the
counterfactual of `policies.currency.rate_for_budget`, not run by the launcher yet): every `UPDATE_S`
the idle GPU time spent over the trailing `WINDOW_S` (pro rata while less has passed since the budget
began) is compared with the budget and the rate moves by exp(`GAIN` x log(budget / spent)), bounded.
One `BudgetState` per budget: the site's, and one per tenant that has its own; a model is priced at its
tenant's rate when its tenant has a budget, else at the site's.

Spending is kept per hour (`HOURS_KEPT` hours at most), so a state has a fixed size. Pure: state in, state out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from policies.currency import adjust_rate

UPDATE_S = 3600.0
"""How often a budget's rate moves."""
WINDOW_S = 86_400.0
"""Spending is compared with the budget over this trailing window: budgets are per day."""
GAIN = 0.1
HOUR_S = 3600.0
HOURS_KEPT = int(WINDOW_S // HOUR_S) + 2
"""Hours of spending a state keeps: the window and the hour in progress at each end."""


@dataclass(frozen=True)
class BudgetState:
    """One budget's rate in force and the idle GPU-seconds spent per hour since its window began."""

    rate: float
    since_s: float
    """When spending began to be counted against this budget."""
    updated_s: float
    """When the rate last moved (or the budget began)."""
    hours: tuple[tuple[int, float], ...] = ()
    """(hour index since the epoch, idle GPU-seconds spent in it), oldest first."""


def new_state(rate: float, now_s: float) -> BudgetState:
    return BudgetState(rate=rate, since_s=now_s, updated_s=now_s)


def record_idle(state: BudgetState, now_s: float, idle_gpu_s: float) -> BudgetState:
    """`state` with `idle_gpu_s` spent in the hour of `now_s`; hours older than the window are dropped."""
    hour = int(now_s // HOUR_S)
    spent = dict(state.hours)
    if idle_gpu_s > 0:
        spent[hour] = spent.get(hour, 0.0) + idle_gpu_s
    kept = tuple(sorted((h, s) for h, s in spent.items() if h > hour - HOURS_KEPT))
    return replace(state, hours=kept)


def spent_s(state: BudgetState, now_s: float) -> float:
    """Idle GPU-seconds spent over the trailing window (whole hours) up to `now_s`."""
    first = int((now_s - WINDOW_S) // HOUR_S)
    return sum(s for h, s in state.hours if h > first)


def window_s(state: BudgetState, now_s: float) -> float:
    """The length of the window spending is compared over: a day, or less since the budget began."""
    return max(0.0, min(WINDOW_S, now_s - state.since_s))


def step(state: BudgetState, now_s: float, budget_gpu_h_per_day: float) -> BudgetState:
    """The rate after `now_s`, moved when `UPDATE_S` passed since it last moved."""
    if now_s < state.updated_s + UPDATE_S:
        return state
    window = window_s(state, now_s)
    if window <= 0:
        return replace(state, updated_s=now_s)
    budget_s = budget_gpu_h_per_day * 3600.0 * window / WINDOW_S
    rate = adjust_rate(state.rate, spent_s(state, now_s), budget_s, gain=GAIN)
    return replace(state, rate=rate, updated_s=now_s)


def spent_gpu_h(state: BudgetState, now_s: float) -> float:
    return spent_s(state, now_s) / 3600.0


__all__ = [
    "GAIN",
    "HOURS_KEPT",
    "UPDATE_S",
    "WINDOW_S",
    "BudgetState",
    "new_state",
    "record_idle",
    "spent_gpu_h",
    "spent_s",
    "step",
    "window_s",
]
