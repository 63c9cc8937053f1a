"""Idle GPU-hour budgets in the launcher: what each budget's instances spent idle, and its rate in force.

Every tick the launcher adds, per budget, the GPU-seconds its models' instances were held without serving
since the last tick (started, loading, or ready with no request in flight: what the simulator counts as
idle), chooses each budget's exchange rate again at every whole hour (`policies.idle_budget`, the
controller `slurmless simulate --budget` and `--tenant-budgets` replay) and prices every model at its
budget's rate: its owner tenant's when that tenant has an idle budget, else the site's
(`launcher.idle_budget_gpu_hours_per_day`), else the fixed `launcher.exchange_rate`.

At each hourly step a budget is handed the step curve of the gaps its models recorded since their
previous step: only each model's gap counts at that step are kept, here in memory (after a restart the
first step prices the gaps recorded since the launcher started; a model budgeted later prices nothing at
its first step). Each budget's state (its rate, the last day's step curves and
residuals) lives in Redis (`warmpool.idle_budgets`), so a standby launcher that takes over carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis

from launcher.metrics import LauncherMetrics
from launcher.settings import LauncherSettings
from policies import idle_budget
from policies.currency import CELLS, FloatArray
from policies.idle_budget import BudgetState
from policies.types import GapHistory, ScalingSpec
from warmpool.idle_budgets import decode, queue_write
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import SITE_BUDGET, Keys
from warmpool.redisio import text
from warmpool.specs import ModelSpec
from warmpool.tenants import TenantStore

S = InstanceState
IDLE_STATES = frozenset({S.STARTING, S.LOADING, S.READY})
"""States in which an instance holds its GPUs (the job runs) and may serve nothing."""
MAX_STEP_S = 900.0
"""A longer time between two ticks is not counted: the launcher was away, and did not see what was held."""
TENANT_REFRESH_S = 30.0
"""How often tenants' budgets are re-read."""
_ENDED = (S.DRAINING.value, S.GONE.value, S.FAILED.value)

Priced = Callable[[], Iterable[tuple[str, GapHistory | None, ScalingSpec]]]
"""Every base model's gap history and policy view, read only when a budget steps."""


def idle_gpu_s(
    records: Iterable[InstanceRecord],
    specs: Mapping[str, ModelSpec],
    inflight: Mapping[str, Mapping[str, int]],
    since_s: float,
    now_s: float,
) -> dict[str, float]:
    """Per model, the GPU-seconds its instances were held without serving over [`since_s`, `now_s`].

    An instance holds its GPUs from its job's start (its `starting` timestamp) until it drains, ends or
    fails (now while it has not): what the simulator counts, whenever between two ticks that happened.
    A ready instance with requests in flight at this tick served since it became ready (or over the
    whole step); its loading before that was idle.
    """
    out: dict[str, float] = {}
    for record in records:
        spec = specs.get(record.model)
        started_s = record.timestamps.get(S.STARTING.value)
        if spec is None or started_s is None or started_s >= now_s:
            continue
        ends = [record.timestamps[k] for k in _ENDED if k in record.timestamps]
        if record.state is S.READY and inflight.get(record.model, {}).get(record.id, 0) > 0:
            ends.append(record.timestamps.get(S.READY.value, started_s))  # serving since it became ready
        if ends:
            end_s = min(ends)
        elif record.state in IDLE_STATES:
            end_s = now_s
        else:
            continue
        held_s = min(end_s, now_s) - max(started_s, since_s)
        if held_s > 0:
            gpus = spec.resources.gpus * spec.resources.nodes
            out[record.model] = out.get(record.model, 0.0) + held_s * gpus
    return out


def _counts(hist: GapHistory | None) -> FloatArray:
    return np.asarray(hist.counts, dtype=np.float64) if hist is not None else np.zeros(CELLS)


def budget_of(spec: ModelSpec, tenant_budgets: Mapping[str, float], site_budget: float | None) -> str | None:
    """The budget a model is priced by: its owner tenant's, the site's, or none (the fixed rate)."""
    if spec.owner_tenant is not None and spec.owner_tenant in tenant_budgets:
        return spec.owner_tenant
    return SITE_BUDGET if site_budget is not None else None


@dataclass
class IdleBudgets:
    """Each budget's state as last written; see the module docstring."""

    redis: aioredis.Redis
    keys: Keys
    settings: LauncherSettings
    metrics: LauncherMetrics
    states: dict[str, BudgetState] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    """Budget name -> idle GPU-hours a day, as last read."""
    _tenants: dict[str, float] = field(default_factory=dict)
    _tenants_read_s: float | None = None
    _last_s: float | None = None
    _counts: dict[str, FloatArray] = field(default_factory=dict)
    """Each budgeted model's gap counts at its budget's last step (in memory only)."""

    async def rates(
        self,
        specs: Mapping[str, ModelSpec],
        records: Iterable[InstanceRecord],
        inflight: Mapping[str, Mapping[str, int]],
        now_s: float,
        priced: Priced = lambda: (),
    ) -> dict[str, float]:
        """Every model's exchange rate now, after counting the idle time since the last call (and, at a
        whole hour, pricing the gaps `priced` says the models recorded since their budget's last step)."""
        if self._tenants_read_s is None or not 0 <= now_s - self._tenants_read_s < TENANT_REFRESH_S:
            tenants = await TenantStore(self.redis, self.keys).all()
            self._tenants = {t.name: t.idle_gpu_hours_per_day for t in tenants if t.idle_gpu_hours_per_day}
            self._tenants_read_s = now_s
        site = self.settings.idle_budget_gpu_hours_per_day
        budgets = dict(self._tenants)
        if site is not None:
            budgets[SITE_BUDGET] = site
        self.budgets = budgets
        since_s = now_s if self._last_s is None else max(self._last_s, now_s - MAX_STEP_S)
        first = self._last_s is None
        self._last_s = now_s
        if not budgets:
            return {}
        owner = {name: budget_of(spec, self._tenants, site) for name, spec in specs.items()}
        spent: dict[str, float] = {}
        if first:
            self._remember_counts(owner, priced)  # the first hour's gaps are those recorded from now on
        for model, seconds in idle_gpu_s(records, specs, inflight, since_s, now_s).items():
            if (b := owner.get(model)) is not None:
                spent[b] = spent.get(b, 0.0) + seconds
        await self._advance(budgets, spent, owner, priced, now_s)
        return {model: self.states[b].rate for model, b in owner.items() if b is not None}

    async def _advance(
        self,
        budgets: Mapping[str, float],
        spent: Mapping[str, float],
        owner: Mapping[str, str | None],
        priced: Priced,
        now_s: float,
    ) -> None:
        unknown = [b for b in budgets if b not in self.states]
        if unknown:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in unknown:
                    pipe.hgetall(self.keys.idle_budget(name))
                raws = await pipe.execute()
            for name, raw in zip(unknown, raws, strict=True):
                got = decode({text(k): text(v) for k, v in raw.items()})
                self.states[name] = (
                    got[0] if got is not None else idle_budget.new_state(self.settings.exchange_rate, now_s)
                )
        recorded = {name: idle_budget.record_idle(self.states[name], spent.get(name, 0.0)) for name in budgets}
        stepping = {name for name, state in recorded.items() if idle_budget.due(state, now_s)}
        curves = self._step_curves(stepping, {n: recorded[n].rate for n in stepping}, owner, priced)
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, per_day in budgets.items():
                old = self.states[name]
                new = recorded[name]
                if name in stepping:
                    new = idle_budget.step(new, now_s, per_day, curves[name])
                queue_write(pipe, self.keys, name, old, new, per_day)
                self.states[name] = new
                self.metrics.exchange_rate.labels(name).set(new.rate)
                self.metrics.idle_gpu_hours.labels(name).set(idle_budget.spent_gpu_h(new, now_s))
                self.metrics.idle_budget_gpu_hours.labels(name).set(per_day)
            await pipe.execute()
        for name in [b for b in self.states if b not in budgets]:
            del self.states[name]  # a budget removed: its rate no longer applies

    def _remember_counts(self, owner: Mapping[str, str | None], priced: Priced) -> None:
        for model, hist, _spec in priced():
            if owner.get(model) is not None:
                self._counts[model] = _counts(hist)

    def _step_curves(
        self, stepping: set[str], rates: Mapping[str, float], owner: Mapping[str, str | None], priced: Priced
    ) -> dict[str, FloatArray]:
        """Each stepping budget's step curve: its models' gaps recorded since their previous step, priced
        by their windows now; those models' counts are kept for the next step."""
        if not stepping:
            return {}
        steps: dict[str, list[tuple[GapHistory | None, ScalingSpec, FloatArray]]] = {b: [] for b in stepping}
        for model, hist, spec in priced():
            budget = owner.get(model)
            if budget is None or budget not in stepping:
                continue
            now = _counts(hist)
            before = self._counts.get(model)
            if before is not None and before.shape == now.shape:
                steps[budget].append((hist, spec, now - before))
            self._counts[model] = now
        for model in [m for m in self._counts if owner.get(m) is None]:
            del self._counts[model]  # no longer registered or no longer budgeted
        return {b: idle_budget.step_curve_s(steps[b], rates[b]) for b in stepping}
