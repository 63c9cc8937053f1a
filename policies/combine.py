"""The warm pool's one decision: how many replicas a model should have now, and why.

    desired = clamp(max(reactive, keep-alive, forecast, schedule, min_replicas), 0, max_replicas)

then fitted to the cluster's GPU budget by `policies.budget`. Each term is a pure function of the
model's state and `now_s`; every term leaves a `Reason`, so "why is this model warm?" has an answer.
The forecast also conditions the keep-alive: beyond the floor, the learnt window only holds while the
time-of-day model expects the rest of it to save more (chance of demand x value of a cold start in
those slots) than it costs in idle time; otherwise the model scales to zero after the floor
(`PolicyMix.shorten`, off in `slurmless`). In `slurmless` the keep-alive is instead learnt net of the
forecast (`PolicyMix.net_of_forecast`): gaps whose next arrival the forecast pre-warmed for are not
insured by the keep-alive, so the two policies never both pay for one gap.
"""

from __future__ import annotations

from policies import currency
from policies import forecast as fc_mod
from policies.idle import keep_warm, keepalive_for
from policies.reactive import moving_average_replicas, reactive_replicas
from policies.schedules import scheduled_replicas
from policies.types import Decision, ModelState, PolicyMix, Reason

# The simulator's and the docs' names for the policy configurations compared on the traces.
POLICY_MIXES: dict[str, PolicyMix] = {
    "always-on": PolicyMix(keepalive="none", forecast=False, schedules=False, always_on=True),
    "keepalive-5m": PolicyMix(keepalive="fixed", fixed_keepalive_s=300.0, forecast=False, schedules=False),
    "keepalive-10m": PolicyMix(keepalive="fixed", fixed_keepalive_s=600.0, forecast=False, schedules=False),
    "keepalive-60m": PolicyMix(keepalive="fixed", fixed_keepalive_s=3600.0, forecast=False, schedules=False),
    "reactive-avg": PolicyMix(keepalive="avg", avg_window_s=300.0, forecast=False, schedules=False),
    "hybrid-histogram": PolicyMix(keepalive="histogram", forecast=False, schedules=False),
    "forecast": PolicyMix(keepalive="none", forecast=True, schedules=False),
    "slurmless": PolicyMix(
        keepalive="currency", forecast=True, schedules=True, shorten=False, exchange_rate=currency.DEFAULT_RATE
    ),
    "slurmless-hist": PolicyMix(
        keepalive="histogram",
        forecast=True,
        schedules=True,
        shorten=False,
        net_of_forecast=True,
        price_waits=True,
    ),
}


def decide(state: ModelState, now_s: float) -> Decision:
    """The desired replicas for one model at `now_s`, with reasons and the next instant to recheck."""
    spec, load, mix = state.spec, state.load, state.mix
    reasons: list[Reason] = []
    recheck_s = float("inf")

    if mix.keepalive == "avg":
        react, react_why = moving_average_replicas(load, spec, spec.mean_service_s)
    else:
        react, react_why = reactive_replicas(load, spec)
    reasons.append(Reason("reactive", react, react_why))

    keepalive_s = keepalive_for(state.idle, spec, mix)
    label = {
        "histogram": "learnt keep-alive",
        "fixed": "fixed keep-alive",
        "avg": "average window",
        "oracle": "clairvoyant hold",
    }.get(mix.keepalive, "keep-alive floor")
    threshold = mix.prewarm_threshold
    if mix.keepalive == "currency":
        start_s = load.last_activity_s if load.last_activity_s is not None else now_s
        utc_offset_s = state.forecast.utc_offset_s if state.forecast is not None else 0.0
        rate = mix.exchange_rate
        if mix.budget_margin is not None:
            rate = min(rate, currency.budget_rate(state.gaps, spec, mix.budget_margin))
        keepalive_s, label = currency.keepalive_s(state.gaps, spec, rate, start_s, utc_offset_s)
        if mix.budget_margin is not None:
            label += f", budget {mix.budget_margin:g} x a 10-min keep-alive"
        if state.forecast is not None and threshold is None:
            threshold = currency.prewarm_threshold(state.gaps, spec, rate, state.forecast.slot_s)
    fc_replicas = 0
    if mix.forecast and state.forecast is not None:
        fc_replicas, fc_why, fc_recheck_s = fc_mod.prewarm(state.forecast, spec, now_s, threshold=threshold)
        reasons.append(Reason("forecast", fc_replicas, fc_why))
        recheck_s = min(recheck_s, fc_recheck_s)
        if (
            mix.shorten
            and mix.keepalive == "histogram"
            and keepalive_s > spec.keepalive_floor_s
            and load.last_activity_s is not None
        ):
            shortened = _shorten_by_forecast(state, now_s, keepalive_s)
            if shortened is not None:
                keepalive_s, label = spec.keepalive_floor_s, shortened

    # The keep-alive's own deadline is not a recheck instant: it moves with every request, and the
    # runner reads it from `keepalive_s` and the last activity.
    idle_replicas, idle_why, _deadline_s = keep_warm(load, keepalive_s, now_s, label=label)
    reasons.append(Reason("idle-to-zero", idle_replicas, idle_why))

    sched_replicas = 0
    if mix.schedules and state.occurrences:
        sched_replicas, sched_why, sched_recheck_s = scheduled_replicas(state.occurrences, now_s, spec.cold_start_p99_s)
        reasons.append(Reason("schedule", sched_replicas, sched_why))
        recheck_s = min(recheck_s, sched_recheck_s)

    floor = spec.min_replicas
    if mix.always_on:
        floor = max(floor, 1)
        reasons.append(Reason("always-on", 1, "never scales to zero"))
    elif spec.min_replicas:
        reasons.append(Reason("min-replicas", spec.min_replicas, "configured minimum"))

    desired = max(react, idle_replicas, fc_replicas, sched_replicas, floor)
    if desired > spec.max_replicas:
        reasons.append(Reason("max-replicas", spec.max_replicas, f"capped from {desired}"))
        desired = spec.max_replicas
    desired = max(desired, 0)
    return Decision(
        replicas=desired,
        reasons=tuple(reasons),
        recheck_at_s=recheck_s,
        keepalive_s=keepalive_s if idle_replicas > 0 else None,
    )


def _shorten_by_forecast(state: ModelState, now_s: float, keepalive_s: float) -> str | None:
    """Why the learnt keep-alive should fall back to the floor now, or None to keep it.

    Holding on until `last activity + keepalive_s` costs the remaining time in idle GPU-seconds; what
    it can save is, at most, the forecast's chance of a request in those slots times the value of a
    cold start there (per event, plus per request it would delay at the slots' forecast rate).
    """
    spec, load, fc = state.spec, state.load, state.forecast
    if fc is None or load.last_activity_s is None:
        return None
    end_s = load.last_activity_s + keepalive_s
    remaining_s = end_s - now_s
    p_max = fc_mod.max_p_between(fc, now_s, end_s)
    rate_max = fc_mod.max_rate_between(fc, now_s, end_s)
    if p_max is None or rate_max is None:
        return None
    saving_s = p_max * fc_mod.cold_start_cost_s(spec, 0.0) + rate_max * spec.expected_cold_start_s * (
        spec.cold_request_value_s
    )
    if saving_s >= remaining_s:
        return None
    return f"keep-alive floor (forecast: saving {saving_s:.0f}s < {remaining_s:.0f}s of idle ahead)"


def desired_replicas(state: ModelState, now_s: float) -> tuple[int, list[Reason]]:
    """`decide` for callers that only want the number and its reasons."""
    decision = decide(state, now_s)
    return decision.replicas, list(decision.reasons)
