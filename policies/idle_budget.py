"""Idle GPU-hour budgets: each budget's exchange rate, chosen every hour so that idle spending tracks it.

One controller for every budget in GPU-hours a day: the launcher's (the site's, each tenant's:
`launcher.idle_budgets`) and the simulator's (`slurmless simulate --budget` and `--tenant-budgets`,
`tracesim.budget`, `tracesim.tenant_budget`). It is counterfactual, not an integrator: every hour the rate
becomes the largest of `RATES` at which the gaps the budget's models recorded over the last 24 hours,
priced by each model's current windows (`policies.currency.spend_curve_s`), would have cost at most the
budget minus the residual. The residual is the idle measured beyond what the histories predicted for the
same hours at the rates then in force (idle inside bursts, pre-warms, the model's error).

The day's gaps are never kept per model: at each step the runner prices the gaps each model recorded
since the previous step (`step_curve_s`, from the model's counts now minus its counts then), and the
state keeps the last `STEPS` such step curves, one float per rate, with their residuals. The day's
curve is their sum. Nothing integrates while models have no history (no gap, no curve: the rate is the
grid's top until the residual says otherwise), so nothing winds up.

Pure: state, observations and `now_s` in, state (with the rate in force) out. A state has a fixed size.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from policies.currency import SITE_RATES, FloatArray, rate_for_budget, spend_curve_s
from policies.types import GapHistory, ScalingSpec

UPDATE_S = 3600.0
"""How often a budget's rate is chosen again (at every whole hour, in the launcher)."""
WINDOW_S = 86_400.0
"""Budgets are per day: the gaps priced and the residuals are those of this trailing window."""
STEPS = int(WINDOW_S // UPDATE_S)
"""Step curves (and residuals) a state keeps: one day's."""
RATES: FloatArray = SITE_RATES
"""The rates a budget chooses from."""
NRATES = int(RATES.size)


@dataclass(frozen=True)
class Step:
    """What one hourly step recorded: the spending its gaps would have cost at each of `RATES`, the idle
    measured in it beyond the spending predicted at the rate in force, and the idle measured."""

    end_s: float
    curve_s: tuple[float, ...]
    residual_s: float
    idle_s: float


@dataclass(frozen=True)
class BudgetState:
    """One budget's rate in force, the idle measured since it was chosen, and the last day's steps."""

    rate: float
    since_s: float
    """When spending began to be counted against this budget."""
    updated_s: float
    """When the rate was last chosen (or the budget began)."""
    idle_s: float = 0.0
    """Idle GPU-seconds measured since `updated_s`."""
    steps: tuple[Step, ...] = ()
    """At most `STEPS`, oldest first."""


def new_state(rate: float, now_s: float) -> BudgetState:
    return BudgetState(rate=rate, since_s=now_s, updated_s=now_s)


def record_idle(state: BudgetState, idle_gpu_s: float) -> BudgetState:
    """`state` with `idle_gpu_s` more idle measured in the step in progress."""
    if idle_gpu_s <= 0:
        return state
    return replace(state, idle_s=state.idle_s + idle_gpu_s)


def due(state: BudgetState, now_s: float) -> bool:
    """Whether a whole hour began since the rate was last chosen (the launcher's cadence)."""
    return int(now_s // UPDATE_S) > int(state.updated_s // UPDATE_S)


def step_curve_s(models: Iterable[tuple[GapHistory | None, ScalingSpec, FloatArray]], rate: float) -> FloatArray:
    """What the gaps recorded in one step would have cost at each of `RATES`, then at `rate` (the last entry).

    `models`: each model's history, policy view and the gap counts it recorded in the step (its counts
    now minus its counts at the previous step); each model's current windows price its own gaps.
    """
    rates = np.append(RATES, rate)
    out = np.zeros(rates.size)
    for hist, spec, counts in models:
        delta = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
        if delta.any():
            out += spend_curve_s(hist, spec, rates, counts=delta)
    return out


def step(state: BudgetState, now_s: float, budget_gpu_h_per_day: float, curve_s: FloatArray) -> BudgetState:
    """The state after the step ending at `now_s`, with the rate for the next one.

    `curve_s`: `step_curve_s` of the budget's models over the step (`NRATES` + 1 floats). Steps older
    than the window are dropped; the budget is pro rata while less than a day has passed since it began.
    """
    curve = np.asarray(curve_s, dtype=np.float64)
    if curve.shape != (NRATES + 1,):
        raise ValueError(f"a step curve has {NRATES + 1} entries, not {curve.size}")
    residual_s = state.idle_s - float(curve[-1])
    new = Step(now_s, tuple(curve[:-1].tolist()), residual_s, state.idle_s)
    kept = (*(s for s in state.steps if s.end_s > now_s - WINDOW_S), new)[-STEPS:]
    window_s = max(0.0, min(WINDOW_S, now_s - state.since_s))
    day = np.sum([s.curve_s for s in kept], axis=0)
    allowed_s = budget_gpu_h_per_day * 3600.0 * window_s / WINDOW_S - sum(s.residual_s for s in kept)
    rate = rate_for_budget(day, allowed_s, RATES)
    return BudgetState(rate=rate, since_s=state.since_s, updated_s=now_s, idle_s=0.0, steps=kept)


def spent_s(state: BudgetState, now_s: float) -> float:
    """Idle GPU-seconds measured over the trailing day (whole steps) up to `now_s`."""
    return state.idle_s + sum(s.idle_s for s in state.steps if s.end_s > now_s - WINDOW_S)


def spent_gpu_h(state: BudgetState, now_s: float) -> float:
    return spent_s(state, now_s) / 3600.0


__all__ = [
    "NRATES",
    "RATES",
    "STEPS",
    "UPDATE_S",
    "WINDOW_S",
    "BudgetState",
    "Step",
    "due",
    "new_state",
    "record_idle",
    "spent_gpu_h",
    "spent_s",
    "step",
    "step_curve_s",
]
