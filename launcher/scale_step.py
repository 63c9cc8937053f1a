"""The launcher tick's scaling step, incremental: plan only the models whose inputs may have changed.

With thousands of registered models most are quiet most of the time: no instance, nothing queued,
nothing wanted, the same snapshot as at the last tick. Their plan would come back unchanged from the
planner and the tick would do nothing for them, so after a full pass they are not looked at again
until something says they may have changed (`ScaleStep._due`). A full pass over every base model
runs when the registry changed, a demand slot ended (every forecast moves), an idle budget moved its
rate, the schedules were read again, or a cluster-wide GPU budget is set (fitting it weighs every
model's ask against all others).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from launcher.batch_scaling import NO_BATCH, batch_needs, pending_by_model
from launcher.desired import PolicyInputs, fit_to_budget, live_warm_requests, policy_spec
from launcher.history import ModelHistory
from launcher.idle_budgets import IdleBudgets
from launcher.report import TickReport
from launcher.scaling import HistoryCache, ModelInputs, Planner, live_by_model, model_actions
from launcher.scaling import expected_cold_start_s as cold_start_s_of
from launcher.settings import LauncherSettings
from launcher.site_rate import SiteRate
from policies.types import GapHistory, Occurrence, ScalingSpec
from warmpool.batches import Batches
from warmpool.instances import InstanceRecord
from warmpool.keys import Keys
from warmpool.snapshot import ModelSnapshot, SnapshotCache
from warmpool.specs import ModelSpec

if TYPE_CHECKING:
    from launcher.controller import Actuator


class ScaleStep:
    """Policy inputs, plans and the budget for the registered base models; acts through the `Actuator`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        settings: LauncherSettings,
        act: Actuator,
        snapshots: SnapshotCache,
        idle_budgets: IdleBudgets,
    ) -> None:
        self.settings = settings
        self.idle_budgets = idle_budgets
        self.act = act
        self.snapshots = snapshots
        self.inputs = PolicyInputs(redis, keys)
        self.batches = Batches(redis, keys)
        self.planner = Planner(settings)
        self.hist_cache = HistoryCache()
        self._leads_s: dict[str, float] = {}
        """Each base model's expected cold start, from its history (`histories`)."""
        self._leads_changed: set[str] = set()
        """Models whose lead moved since it was last passed to `record_gap_cold`."""
        self._awake: set[str] = set()
        """Models the last scaling step found not quiet (see `_due`)."""
        self._wake: list[tuple[float, str]] = []
        """Quiet models by the instant their plan may change by itself (a heap; stale entries are harmless)."""
        self._demands_seen: object = None
        self._rates_seen: dict[str, float] = {}
        self.site_rate = SiteRate(settings.idle_budget_share, settings.exchange_rate)
        self._site_rate_seen: float | None = None
        self.incremental = True
        """False: every tick is a full pass (the reference the incremental step is tested against)."""
        self.looked_at = 0
        """Models planned so far, over all ticks (for the benchmark and tests)."""

    def forget(self, bases: list[str]) -> None:
        """Drop what is remembered of models no longer registered (the registry changed)."""
        self.inputs.forget(bases)
        self.planner.forget(bases)

    def histories(self, snaps: dict[str, ModelSnapshot], maybe_changed: set[str] | None) -> dict[str, ModelHistory]:
        """Each model's history, and its expected cold start (the scheduling lead) kept beside it: both
        recomputed only for the models whose snapshot may have changed (`maybe_changed`; None: all)."""
        hists = self.hist_cache.histories(snaps, maybe_changed)
        if maybe_changed is None:
            self._leads_s = {}
        for name in self.hist_cache.changed if maybe_changed is not None else hists:
            self._leads_s[name] = cold_start_s_of(hists[name], self.settings)
        self._leads_changed |= self.hist_cache.changed if maybe_changed is not None else set(hists)
        return hists

    def _due(
        self,
        names: list[str],
        base_set: frozenset[str],
        now_s: float,
        snaps: dict[str, ModelSnapshot],
        live: dict[str, list[InstanceRecord]],
        occurrences: dict[str, tuple[Occurrence, ...]],
        report: TickReport,
    ) -> list[str]:
        """The models the scaling step must look at this tick; the others are quiet with the very inputs
        of their last plan (same snapshot, history, forecast; no instance, warm request or schedule), so
        the planner would hand back that plan and the tick would do nothing for them.

        Looked at: models not quiet at their last tick, models whose snapshot was read since the last
        tick (marked changed by a gateway or the launcher, or due in the rolling refresh) or that the
        tick changed, models with instances or scheduled windows, and quiet models whose plan's
        `until_s` came (a keep-alive ending, a recheck instant, a demand slot's end).
        """
        due = set(self._awake) | self.snapshots.read_since_refresh | report.touched | set(live) | set(occurrences)
        while self._wake and self._wake[0][0] <= now_s:
            due.add(heapq.heappop(self._wake)[1])
        return [n for n in sorted(due) if n in base_set and n in snaps]

    async def run(
        self,
        specs: dict[str, ModelSpec],
        names: list[str],
        base_set: frozenset[str],
        snaps: dict[str, ModelSnapshot],
        hists: dict[str, ModelHistory],
        records: list[InstanceRecord],
        now_s: float,
        report: TickReport,
        *,
        full_pass: bool = True,
    ) -> set[str]:
        """Read the policies' inputs, plan, fit the budget, apply; returns the models whose instances or
        history scaling changed. Every base model on a `full_pass` (the registry changed) or when
        something global moved; otherwise only the models `_due` says may have changed."""
        leads_s = self._leads_s
        await self.inputs.record_gap_cold({m: leads_s[m] for m in self._leads_changed})
        self._leads_changed = set()
        live = live_by_model(records)
        demands = await self.inputs.demand_many(names, now_s)
        schedules_read_s = self.inputs.schedules_read_s
        occurrences = await self.inputs.occurrences(names, now_s, leads_s)

        # Every model's rate in force (after counting the idle time since the last tick): idle budgets
        # move their rates hourly, and a moved rate changes the plan of every model it prices.
        # Every model's gap history and policy view, read only when a rate is chosen (hourly).
        def priced() -> Iterator[tuple[str, GapHistory | None, ScalingSpec]]:
            for n in names:
                spec = policy_spec(
                    specs[n], expected_cold_start_s=leads_s[n], default_keepalive_s=self.settings.default_keepalive_s
                )
                yield n, self.inputs.slot_gaps(n, snaps[n].gaps, now_s), spec

        rates = await self.idle_budgets.rates(
            {n: specs[n] for n in names}, records, {n: snaps[n].inflight for n in names}, now_s, priced
        )
        # The models no budget in GPU-hours prices: the site's default rate, chosen hourly from every
        # model's gap history (`launcher.site_rate`), or the fixed rate.
        site_rate = self.site_rate.at(now_s, lambda: ((hist, spec) for _n, hist, spec in priced()))
        if site_rate is not None:
            self.idle_budgets.metrics.exchange_rate.labels("_default").set(site_rate)
        full = (
            full_pass
            or not self.incremental
            or self.settings.gpu_budget is not None  # the budget weighs every model's ask against all others
            or demands is not self._demands_seen  # a demand slot ended: every forecast moved
            or self.inputs.schedules_read_s != schedules_read_s  # schedules were read again
            or rates != self._rates_seen  # an idle budget moved its exchange rate
            or site_rate != self._site_rate_seen  # so did the site's default budget
        )
        self._demands_seen = demands
        self._rates_seen = rates
        self._site_rate_seen = site_rate
        due = names if full else self._due(names, base_set, now_s, snaps, live, occurrences, report)
        # A batch backlog is read every tick (one round trip, only with batch jobs on): its models are looked at.
        backlog = pending_by_model(await self.batches.backlog(), specs) if self.settings.batch_cold_starts else {}
        if not full and backlog:
            due = sorted(set(due) | {m for m in backlog if m in base_set and m in snaps})
        self.looked_at += len(due)
        warm = live_warm_requests({name: snaps[name].warm for name in due}, now_s)
        await self.act.board.recall(due)
        inputs = [
            ModelInputs(
                specs[n],
                snaps[n],
                hists[n],
                demands.get(n),
                occurrences.get(n, ()),
                warm.get(n),
                self.inputs.slot_gaps(n, snaps[n].gaps, now_s),
                rates.get(n, site_rate),
            )
            for n in due
        ]
        plans = self.planner.plan(inputs, live, now_s, partial=not full)
        fitted = fit_to_budget([p.ask for p in plans], self.settings.gpu_budget)
        needs = batch_needs(plans, fitted, backlog, self.settings)
        if full:
            self._awake = set()
            self._wake = []
        else:
            # The models not looked at are quiet exactly as at their last tick: desired 0, nothing recorded anew.
            report.desired.update(dict.fromkeys(names, 0))
        touched: set[str] = set()
        for plan in plans:
            decision = fitted[plan.spec.name]
            name = plan.spec.name
            need = needs.get(name, NO_BATCH)
            if not (plan.active or decision.replicas or need.replicas) and self.act.board.recorded(name, decision):
                # Nothing held, nothing wanted, nothing new to record: most models, most ticks.
                report.desired[name] = 0
                if name in live or name in warm or occurrences.get(name):
                    self._awake.add(name)
                else:
                    # Quiet: not looked at again until its inputs change or its plan's `until_s`.
                    self._awake.discard(name)
                    heapq.heappush(self._wake, (self.planner.until_s(name) or now_s, name))
                continue
            self._awake.add(name)
            actions = model_actions(plan, decision, now_s, self.settings, need)
            decision = actions.decision
            if not (actions.submissions or actions.drains) and self.act.board.recorded(plan.spec.name, decision):
                report.desired[plan.spec.name] = decision.replicas  # as it was: nothing to do or record
                continue
            if await self.act.apply_actions(plan, actions, now_s, report):
                touched.add(plan.spec.name)
        report.touched |= touched
        return touched


__all__ = ["ScaleStep"]
