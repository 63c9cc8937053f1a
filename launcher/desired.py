"""From warmpool's state to the policies' inputs, and their decision back.

Per model and tick the launcher builds the pure `policies.types.ModelState` and asks
`policies.combine.decide` (the code the trace simulator replays) for

    desired = clamp(max(reactive, keep-alive, forecast, schedule, warm request, min_replicas), 0, max)

then fits all models into the GPU budget with `policies.budget.fit_budget`, each replica priced by the
waiting its release would cause (`policies.eviction`). A live `slurmless models
warm` request is a floor like `min_replicas` under its own policy name, "warm".

What is read from Redis, and how often (`PolicyInputs`):

- demand history (`Keys.demand`, 600 s slots -> requests): folded into a seasonal forecast
  incrementally. A model's first sight folds at most `FORECAST_HISTORY_SLOTS` (three weeks), read with
  one HGETALL; afterwards one HMGET of the slots finished since (usually one) per model per 600 s, for
  all models in one pipeline (`demand_many`).
- schedules: one pipelined read for all models every `SCHEDULE_REFRESH_S`; their occurrences are
  expanded over a rolling `SCHEDULE_HORIZON_S` and re-expanded only when that runs out or the
  schedules changed.
- warm requests: read with the tick's snapshot (`warmpool.snapshot`), filtered here on their end (`live_warm_requests`).
- gap history: read with the tick's snapshot, but a decision uses it as it stood at the start of the
  current demand slot (`PolicyInputs.slot_gaps`): what was learnt is folded in once per slot, as the
  simulator folds every finished 600-s window (`tracesim.engine`), so both decide on the same history.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from policies.budget import BudgetRequest, fit_budget
from policies.combine import POLICY_MIXES, decide
from policies.forecast import expected_rate_per_s, new_forecast, observe_slot
from policies.idle import learnt_keepalive_s
from policies.types import (
    Decision,
    GapHistory,
    IdleHistogram,
    LoadSnapshot,
    ModelState,
    Occurrence,
    Reason,
    ScalingSpec,
    SeasonalForecast,
)
from warmpool.gaps import GAP_COLD
from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.redisio import text
from warmpool.schedule_store import ScheduleSpec
from warmpool.specs import ModelSpec
from warmpool.warm import WarmRequest

IDLE_BINS = 240
IDLE_BIN_S = 60.0
DEFAULT_MAX_KEEPALIVE_S = 4 * 3600.0
MIX = POLICY_MIXES["slurmless"]
"""The same mix the trace simulator replays as `slurmless`: `policies.currency` at the launcher's exchange
rate, learning from the gap history the admit script records (`warmpool.gaps`)."""
RELOAD_SHARE = 0.6
"""Share of the expected cold start spent loading on a held GPU (the rest is the queue wait): the idle a
reload costs. The simulator's cold-start model has 93 s of 155 s."""

GAP_COLD_TOLERANCE = 0.05
"""A model's expected cold start is re-written for the admit script when it moved by more than this share."""
FORECAST_HISTORY_SLOTS = 3 * 7 * 86_400 // DEMAND_SLOT_S
"""Slots read when a model's forecast is first built: three weeks, so every week slot was seen thrice."""
FOLD_GRACE_S = 30.0
"""A slot is folded this long after it ends: a gateway whose clock lags may still count into it."""
RECENT_SLOTS = 6
"""Finished slots (one hour) whose mean request rate prices a replica in the GPU budget."""
SCHEDULE_REFRESH_S = 30.0
"""How often schedules are re-read: an added schedule takes effect within this (leads are minutes)."""
SCHEDULE_HORIZON_S = 86_400.0
"""How far ahead schedules are expanded at once."""
WARM = "warm"
CUTS = frozenset({"budget", "max-replicas", "no-waiters"})
"""Reasons that lower the replicas the other policies ask for."""


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """What the launcher observed for one model this tick."""

    queue_depth: int
    oldest_wait_s: float
    in_flight: int
    ready: int
    held: int
    last_request_s: float | None
    idle_counts: dict[int, int]
    gaps: GapHistory | None = None


@dataclass(frozen=True, slots=True)
class DemandForecast:
    """A model's seasonal forecast, the demand slots folded into it so far, and the latest counts."""

    forecast: SeasonalForecast
    next_slot: int
    """The first demand slot not folded yet."""
    recent_counts: tuple[int, ...] = ()
    """Requests in the last `RECENT_SLOTS` folded slots, oldest first."""


# --- pure mapping -----------------------------------------------------------------------------


def policy_spec(
    spec: ModelSpec,
    *,
    expected_cold_start_s: float,
    default_keepalive_s: float,
    schedule_lead_s: float | None = None,
) -> ScalingSpec:
    """The policies' view of a registered model; its keep-alive bounds come from the model's policy.

    `expected_cold_start_s` (p95 queue wait + p95 load) is the forecast's lead and prices a cold start;
    `schedule_lead_s` (the same by default) is how long before a scheduled window a replica is asked for.
    """
    floor_s = spec.policy.keepalive_min_s if spec.policy.keepalive_min_s is not None else expected_cold_start_s
    max_s = spec.policy.keepalive_max_s if spec.policy.keepalive_max_s is not None else DEFAULT_MAX_KEEPALIVE_S
    max_s = max(max_s, floor_s)
    cold_s = max(expected_cold_start_s, 1e-3)
    return ScalingSpec(
        reload_idle_s=RELOAD_SHARE * cold_s,
        min_keepalive_s=spec.policy.keepalive_min_s or 0.0,
        name=spec.name,
        min_replicas=spec.policy.min_replicas,
        max_replicas=spec.policy.max_replicas,
        gpus_per_replica=gpus_per_replica(spec),
        target_concurrency=float(spec.policy.max_concurrency),
        expected_cold_start_s=cold_s,
        cold_start_p99_s=cold_s if schedule_lead_s is None else schedule_lead_s,
        keepalive_floor_factor=floor_s / cold_s,
        default_keepalive_s=min(max(default_keepalive_s, floor_s), max_s),
        max_keepalive_s=max_s,
    )


def gpus_per_replica(spec: ModelSpec) -> int:
    """GPUs one instance holds over all its nodes."""
    return spec.resources.gpus * spec.resources.nodes


def idle_histogram(counts: dict[int, int], spec: ScalingSpec) -> IdleHistogram:
    """The gateway's idle-gap buckets (minutes -> count) as the policies' histogram, with its learnt keep-alive."""
    bins = [0] * IDLE_BINS
    overflow = 0
    for minute, count in counts.items():
        if 0 <= minute < IDLE_BINS:
            bins[minute] += count
        else:
            overflow += count
    hist = IdleHistogram(bin_s=IDLE_BIN_S, counts=tuple(bins), overflow=overflow)
    return IdleHistogram(
        bin_s=hist.bin_s, counts=hist.counts, overflow=overflow, keepalive_s=learnt_keepalive_s(hist, spec)
    )


def finished_slots_end(now_s: float) -> int:
    """Demand slots below this index are over (with `FOLD_GRACE_S`) and may be folded."""
    return int((now_s - FOLD_GRACE_S) // DEMAND_SLOT_S)


def fold_demand(state: DemandForecast | None, counts: Mapping[int, int], end_slot: int) -> DemandForecast | None:
    """Fold the demand slots up to `end_slot` (exclusive) into `state`; a slot missing from `counts` had none.

    Without a `state`, folding starts at the first slot of `counts` that saw a request: slots before a
    model's first request are unknown, not empty (an empty history would read as "never any demand"
    and cut its keep-alive). Returns None while no request was ever seen. Pure.
    """
    if state is None:
        seen = [s for s, c in counts.items() if c > 0 and s < end_slot]
        if not seen:
            return None
        state = DemandForecast(new_forecast(slot_s=float(DEMAND_SLOT_S)), next_slot=min(seen))
    fc, recent = state.forecast, list(state.recent_counts)
    for slot in range(state.next_slot, end_slot):
        count = counts.get(slot, 0)
        fc = observe_slot(fc, slot * float(DEMAND_SLOT_S), count)
        recent.append(count)
    return DemandForecast(fc, max(state.next_slot, end_slot), tuple(recent[-RECENT_SLOTS:]))


def demand_rate_per_s(demand: DemandForecast | None, now_s: float) -> float:
    """What one replica of the model is worth in the budget: the higher of forecast and recent rate."""
    if demand is None:
        return 0.0
    recent = sum(demand.recent_counts) / (len(demand.recent_counts) * DEMAND_SLOT_S) if demand.recent_counts else 0.0
    return max(recent, expected_rate_per_s(demand.forecast, now_s) or 0.0)


def schedule_occurrences(schedules: Iterable[ScheduleSpec], start_s: float, end_s: float) -> tuple[Occurrence, ...]:
    """Every warm window of `schedules` overlapping [start_s, end_s), sorted by start (as the policy needs)."""
    found = [o for s in schedules for o in s.occurrences(start_s, end_s)]
    return tuple(sorted(found, key=lambda o: (o.start_s, o.end_s)))


def with_floor(decision: Decision, floor: Reason, max_replicas: int) -> Decision:
    """`decision` raised to `floor.replicas` (capped at `max_replicas`), with the floor among its reasons."""
    replicas = max(decision.replicas, min(floor.replicas, max_replicas))
    reasons = [*decision.reasons, floor]
    if floor.replicas > max_replicas and not any(r.policy == "max-replicas" for r in reasons):
        reasons.append(Reason("max-replicas", max_replicas, f"capped from {floor.replicas}"))
    return replace(decision, replicas=replicas, reasons=tuple(reasons))


def with_cap(decision: Decision, replicas: int, policy: str, detail: str) -> Decision:
    """`decision` lowered to at most `replicas`, with the cut among its reasons (unchanged when not lower)."""
    if decision.replicas <= replicas:
        return decision
    return replace(decision, replicas=replicas, reasons=(*decision.reasons, Reason(policy, replicas, detail)))


def warm_reason(warm: WarmRequest) -> Reason:
    """The reason a live `slurmless models warm` request gives."""
    until = datetime.fromtimestamp(warm.until_s, tz=UTC).isoformat(timespec="seconds")
    by = f" by {warm.requested_by}" if warm.requested_by else ""
    return Reason(WARM, warm.replicas, f"warm request{by} until {until}")


def desired_replicas(
    spec: ModelSpec,
    load: ModelLoad,
    now_s: float,
    *,
    expected_cold_start_s: float,
    default_keepalive_s: float,
    schedule_lead_s: float | None = None,
    forecast: SeasonalForecast | None = None,
    occurrences: tuple[Occurrence, ...] = (),
    warm: WarmRequest | None = None,
    extra_occurrences: tuple[Occurrence, ...] = (),
    exchange_rate: float | None = None,
) -> Decision:
    """The policies' decision for one model at `now_s`, before the GPU budget.

    `exchange_rate` (idle GPU-seconds per user-second of waiting) prices every hold and pre-warm;
    None: `MIX`'s default, the rate `slurmless simulate` replays by default.
    """
    pspec = policy_spec(
        spec,
        expected_cold_start_s=expected_cold_start_s,
        default_keepalive_s=default_keepalive_s,
        schedule_lead_s=schedule_lead_s,
    )
    occs = occurrences
    if extra_occurrences:
        occs = tuple(sorted((*occurrences, *extra_occurrences), key=lambda o: (o.start_s, o.end_s)))
    state = ModelState(
        spec=pspec,
        load=load_snapshot(load),
        idle=idle_histogram(load.idle_counts, pspec),
        forecast=forecast,
        occurrences=occs,
        mix=MIX if exchange_rate is None else replace(MIX, exchange_rate=exchange_rate),
        gaps=load.gaps,
    )
    decision = decide(state, now_s)
    if warm is not None and warm.until_s > now_s:
        decision = with_floor(decision, warm_reason(warm), spec.policy.max_replicas)
        decision = replace(decision, recheck_at_s=min(decision.recheck_at_s, warm.until_s))
    return decision


@dataclass(frozen=True, slots=True)
class BudgetAsk:
    """One model's decision and what releasing its replicas would cost, for `fit_to_budget`."""

    spec: ModelSpec
    decision: Decision
    waiting: int = 0
    release_wait_s: tuple[float, ...] = ()
    """Per replica, the expected user-seconds of waiting its release causes (`policies.eviction`)."""
    floor: int = 0
    """Replicas promised, granted first whatever their price: `min_replicas`, a live warm request, a schedule."""


def fit_to_budget(asks: Sequence[BudgetAsk], budget_gpus: int | None) -> dict[str, Decision]:
    """Every model's decision fitted into `budget_gpus` (None: unlimited) by `policies.budget.fit_budget`.

    A model that gives way keeps its decision's reasons plus a "budget" reason, and its replicas drop.
    """
    if budget_gpus is None:
        return {a.spec.name: a.decision for a in asks}
    requests = [
        BudgetRequest(
            model=a.spec.name,
            desired=a.decision.replicas,
            gpus_per_replica=gpus_per_replica(a.spec),
            promised=min(a.floor, a.decision.replicas),
            waiting=a.waiting,
            release_wait_s=a.release_wait_s,
        )
        for a in asks
    ]
    granted = fit_budget(requests, budget_gpus)
    out: dict[str, Decision] = {}
    for ask in asks:
        got, cuts = granted[ask.spec.name]
        out[ask.spec.name] = replace(ask.decision, replicas=got, reasons=(*ask.decision.reasons, *cuts))
    return out


def promised_replicas(spec: ModelSpec, decision: Decision, warm: WarmRequest | None) -> int:
    """Replicas that are promises, not bets: `min_replicas`, a live warm request, a schedule's window."""
    scheduled = max((r.replicas for r in decision.reasons if r.policy == "schedule"), default=0)
    return max(spec.policy.min_replicas, warm.replicas if warm is not None else 0, scheduled)


def load_snapshot(load: ModelLoad) -> LoadSnapshot:
    """The policies' view of what the launcher observed for a model."""
    return LoadSnapshot(
        queue_depth=load.queue_depth,
        oldest_wait_s=load.oldest_wait_s,
        in_flight=float(load.in_flight),
        ready_replicas=load.ready,
        held_replicas=load.held,
        last_activity_s=load.last_request_s,
    )


def drivers(decision: Decision) -> tuple[Reason, ...]:
    """The reasons that set the number: policies asking for at least it, and any cut below what they asked."""
    cuts = [r for r in decision.reasons if r.policy in CUTS]
    if decision.replicas == 0:
        return tuple(cuts)
    asks = [r for r in decision.reasons if r.policy not in CUTS and r.replicas >= decision.replicas]
    return (*asks, *cuts)


def why(decision: Decision) -> str:
    """One line answering "why this many replicas?"."""
    found = drivers(decision)
    if not found:
        idle = [r.detail for r in decision.reasons if r.policy == "idle-to-zero"]
        return "no policy asks for a replica" + (f": {idle[0]}" if idle else "")
    return "; ".join(f"{r.policy}={r.replicas} ({r.detail})" for r in found)


def desired_record(decision: Decision, now_s: float) -> dict[str, Any]:
    """The `Keys.desired` value for a model: replicas, every policy's reason, the summary, and when."""
    return {
        "replicas": decision.replicas,
        "why": why(decision),
        "drivers": sorted({r.policy for r in drivers(decision)}),
        "reasons": [{"policy": r.policy, "replicas": r.replicas, "detail": r.detail} for r in decision.reasons],
        "at_s": now_s,
    }


LONG_READ_SLOTS = 144
"""A read of more slots than this (a day: a model's first sight) fetches the whole hash instead."""


def _queue_slot_read(pipe: Any, key: str, start: int, end: int) -> None:
    """Queue the read of demand slots [start, end) of `key` on `pipe`.

    Usually one slot: HMGET. A first sight spans three weeks, 3,024 slots mostly never written: asking
    for each by name costs more than fetching the slots that exist (at most one per 600 s of demand).
    """
    if end - start > LONG_READ_SLOTS:
        pipe.hgetall(key)
    else:
        pipe.hmget(key, [str(s) for s in range(start, end)])


def _slot_counts(raw: Any, start: int, end: int) -> dict[int, int]:
    """Requests per slot in [start, end) from an HGETALL (dict) or HMGET (list) reply."""
    if isinstance(raw, dict):
        out: dict[int, int] = {}
        for k, v in raw.items():
            slot = int(text(k))
            if start <= slot < end:
                out[slot] = int(text(v))
        return out
    return {s: int(text(v)) for s, v in zip(range(start, end), raw, strict=True) if v is not None}


def live_warm_requests(raws: Mapping[str, bytes | None], now_s: float) -> dict[str, WarmRequest]:
    """The stored warm requests (`Keys.warm` values by model) that have not ended at `now_s`."""
    out: dict[str, WarmRequest] = {}
    for model, raw in raws.items():
        if raw is not None:
            warm = WarmRequest.model_validate_json(raw)
            if warm.until_s > now_s:
                out[model] = warm
    return out


# --- reading the inputs -----------------------------------------------------------------------


@dataclass
class _Expanded:
    digest: str
    end_s: float
    occurrences: tuple[Occurrence, ...]


@dataclass
class _History:
    demand: DemandForecast | None
    read_to_slot: int


@dataclass
class InputCounters:
    """How much the inputs cost: tests and operators check the reads stay bounded."""

    demand_reads: int = 0
    demand_slots_read: int = 0
    schedule_reads: int = 0
    schedule_expansions: int = 0
    schedule_errors: int = 0


@dataclass
class PolicyInputs:
    """The launcher's cached view of the policies' slow-moving inputs; see the module docstring."""

    redis: aioredis.Redis
    keys: Keys
    history_slots: int = FORECAST_HISTORY_SLOTS
    schedule_refresh_s: float = SCHEDULE_REFRESH_S
    schedule_horizon_s: float = SCHEDULE_HORIZON_S
    counters: InputCounters = field(default_factory=InputCounters)
    _history: dict[str, _History] = field(default_factory=dict)
    _schedules: dict[str, list[ScheduleSpec]] = field(default_factory=dict)
    _schedules_read_s: float | None = None
    _expanded: dict[str, _Expanded] = field(default_factory=dict)
    _gap_cold: dict[str, float] = field(default_factory=dict)
    _demand_memo: tuple[int, Sequence[str], dict[str, DemandForecast | None]] | None = None
    _gaps: dict[str, tuple[int, GapHistory | None]] = field(default_factory=dict)

    @property
    def schedules_read_s(self) -> float | None:
        """When the schedules were last read (`occurrences` reads them every `schedule_refresh_s`)."""
        return self._schedules_read_s

    def slot_gaps(self, model: str, gaps: GapHistory | None, now_s: float) -> GapHistory | None:
        """The model's gap history as the policies use it: `gaps` as read at the first tick of the current
        demand slot (the same object until the next slot, so remembered decisions stay valid)."""
        slot = int(now_s // DEMAND_SLOT_S)
        held = self._gaps.get(model)
        if held is None or held[0] != slot:
            held = (slot, gaps)
            self._gaps[model] = held
        return held[1]

    async def record_gap_cold(self, cold_s: Mapping[str, float]) -> None:
        """Tell the admit script each model's expected cold start (`warmpool.gaps` prices waits with it).

        Written only when it moved by more than `GAP_COLD_TOLERANCE`: usually nothing is written.
        """
        changed = {
            m: c
            for m, c in cold_s.items()
            if (old := self._gap_cold.get(m)) is None or abs(c - old) > GAP_COLD_TOLERANCE * max(old, 1.0)
        }
        if not changed:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for model, value in changed.items():
                pipe.hset(self.keys.model_stats(model), GAP_COLD, repr(round(value, 3)))
                # The snapshot carries the stats hash: mark the model so the next tick re-reads it.
                pipe.sadd(self.keys.dirty_models, model)
            await pipe.execute()
        self._gap_cold.update(changed)

    async def demand(self, model: str, now_s: float) -> DemandForecast | None:
        """The model's forecast with every finished demand slot folded in."""
        return (await self.demand_many([model], now_s))[model]

    async def _fold(self, model: str, start: int, end: int, raw: Any) -> DemandForecast | None:
        """Fold the slots [start, end) read for `model` (see `_queue_slot_read`) into its cached forecast."""
        known = self._history.get(model)
        slots = range(start, end)
        self.counters.demand_reads += 1
        self.counters.demand_slots_read += len(slots)
        counts = _slot_counts(raw, start, end)
        previous = known.demand if known is not None else None
        if previous is not None and previous.next_slot < start:
            # The launcher was away longer than the history window: start over from what is kept.
            previous = None
        if len(slots) > 144 and counts:
            # A first build folds weeks of slots: keep the event loop free for callbacks meanwhile.
            demand = await asyncio.to_thread(fold_demand, previous, counts, end)
        else:
            demand = fold_demand(previous, counts, end)
        self._history[model] = _History(demand, end)
        return demand

    async def occurrences(
        self, models: Sequence[str], now_s: float, lead_s: Mapping[str, float]
    ) -> dict[str, tuple[Occurrence, ...]]:
        """Each model's scheduled windows from `now_s` over the horizon (always covering its lead)."""
        read_s = self._schedules_read_s
        if read_s is None or not 0 <= now_s - read_s < self.schedule_refresh_s:
            await self._read_schedules(models)
            self._schedules_read_s = now_s
        out: dict[str, tuple[Occurrence, ...]] = {}
        # A dict lookup per model (most have no schedule); only scheduled models are expanded, and only
        # when their schedules or the horizon they need changed.
        for model in models:
            specs = self._schedules.get(model, [])
            if not specs:
                self._expanded.pop(model, None)
                continue
            digest = hashlib.sha256("\n".join(s.model_dump_json() for s in specs).encode()).hexdigest()
            cached = self._expanded.get(model)
            need_s = now_s + lead_s.get(model, 0.0) + SCHEDULE_REFRESH_S
            if cached is None or cached.digest != digest or cached.end_s < need_s:
                end_s = need_s + self.schedule_horizon_s
                try:
                    found = schedule_occurrences(specs, now_s, end_s)
                except ValueError:
                    # Validated when stored; a feed that still fails keeps nothing warm rather than the tick.
                    found = ()
                    self.counters.schedule_errors += 1
                cached = _Expanded(digest, end_s, found)
                self._expanded[model] = cached
                self.counters.schedule_expansions += 1
            out[model] = tuple(o for o in cached.occurrences if o.end_s > now_s)
        return out

    async def _read_schedules(self, models: Sequence[str]) -> None:
        by_model: dict[str, list[ScheduleSpec]] = {}
        if models:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.hgetall(self.keys.schedules(model))
                raws: list[dict[bytes, bytes]] = await pipe.execute()
            for model, raw in zip(models, raws, strict=True):
                specs = sorted((ScheduleSpec.model_validate_json(v) for v in raw.values()), key=lambda s: s.id)
                if specs:
                    by_model[model] = specs
        self._schedules = by_model
        self.counters.schedule_reads += 1

    async def demand_many(self, models: Sequence[str], now_s: float) -> dict[str, DemandForecast | None]:
        """`demand` for many models: the slots of all that need reading in one pipelined round trip.

        Usually no model needs any (slots are read once per `DEMAND_SLOT_S`); when a slot ends, every
        model reads it at the same tick, and 1,000 sequential HMGETs would hold the tick for ~0.3 s.
        """
        end = finished_slots_end(now_s)
        memo = self._demand_memo
        if memo is not None and memo[0] == end and memo[1] is models:
            # No slot ended and the same models (the launcher passes its one list while the registry stands).
            return memo[2]
        out: dict[str, DemandForecast | None] = {}
        reads: list[tuple[str, int]] = []
        for model in models:
            known = self._history.get(model)
            start = end - self.history_slots if known is None else max(known.read_to_slot, end - self.history_slots)
            if known is not None and start >= end:
                out[model] = known.demand
            else:
                reads.append((model, start))
        if reads:
            async with self.redis.pipeline(transaction=False) as pipe:
                for model, start in reads:
                    _queue_slot_read(pipe, self.keys.demand(model), start, end)
                raws: list[Any] = await pipe.execute()
            for (model, start), raw in zip(reads, raws, strict=True):
                out[model] = await self._fold(model, start, end, raw)
        self._demand_memo = (end, models, out)
        return out

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the caches of models no longer registered."""
        kept = set(keep)
        self._demand_memo = None
        for model in [m for m in self._gap_cold if m not in kept]:
            del self._gap_cold[model]
        for cache in (self._history, self._expanded, self._gaps):
            for model in [m for m in cache if m not in kept]:
                del cache[model]


# --- reusing decisions ------------------------------------------------------------------------

DECISION_MAX_AGE_S = 300.0
"""A remembered decision is recomputed at least this often (staggered per model), whatever its recheck says."""


def decision_expires_s(decision: Decision, last_activity_s: float | None) -> float:
    """Until when `decision` stands if none of its inputs change: its own recheck instant, and the end of
    the keep-alive holding it (which `Decision.recheck_at_s` leaves out because it moves with requests)."""
    until_s = decision.recheck_at_s
    if decision.keepalive_s is not None and last_activity_s is not None:
        until_s = min(until_s, last_activity_s + decision.keepalive_s)
    return until_s


@dataclass
class DecisionMemo:
    """Each model's last decision, reused while its inputs are unchanged and it has not expired.

    With 1,000 registered models, most of them cold and quiet, the policies' pure decision cost ~23 ms
    per tick on the 2-core VM for answers that had not changed. The key is everything the decision
    reads apart from the time (the spec object, the observed load, the expected cold start, the
    forecast object, the schedule windows, the warm request); the time only matters through the
    decision's recheck instant and its keep-alive deadline (`decision_expires_s`).
    """

    max_age_s: float = DECISION_MAX_AGE_S
    hits: int = 0
    misses: int = 0
    _entries: dict[str, tuple[tuple[object, ...], Decision, float]] = field(default_factory=dict)

    def get(self, model: str, key: tuple[object, ...], now_s: float) -> Decision | None:
        entry = self._entries.get(model)
        if entry is not None and now_s < entry[2] and entry[0] == key:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def expires_s(self, model: str) -> float:
        """Until when the model's remembered decision stands (-inf when none is)."""
        entry = self._entries.get(model)
        return entry[2] if entry is not None else float("-inf")

    def put(self, model: str, key: tuple[object, ...], decision: Decision, now_s: float, expires_s: float) -> None:
        # Staggered so that models first decided in the same tick are not all recomputed in one later tick.
        stagger = 0.5 + (int(hashlib.blake2b(model.encode(), digest_size=2).hexdigest(), 16) % 1000) / 2000
        self._entries[model] = (key, decision, min(expires_s, now_s + self.max_age_s * stagger))

    def forget(self, keep: Iterable[str]) -> None:
        kept = set(keep)
        for model in [m for m in self._entries if m not in kept]:
            del self._entries[model]
