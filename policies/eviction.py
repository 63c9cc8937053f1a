"""What releasing a replica would cost, in the currency's user-seconds of waiting: the GPU budget's price.

When the site's GPU budget forces replicas out (`policies.budget`), the one whose release causes the
least expected waiting per GPU it frees gives way first. For each replica a model holds or asks for:

- requests waiting or in flight on it: each would wait a cold start (`expected_cold_start_s`), and for
  the first replica the burst behind them too (the model's learnt wait per cold start);
- held by the priced keep-alive after activity `idle_s` ago, window K: the next request comes within
  the window with the chance the model's learnt gaps give (gaps longer than `idle_s`, shorter than K),
  and then waits what a cold start at such a gap's end made requests wait. Both come from the same
  shrunk gap distribution the keep-alive is priced on (`policies.currency.effective`), and K is
  priced at the model's exchange rate, so a model whose rate holds it longer is dearer to evict;
- asked for by the forecast: the slot's chance of demand times the model's wait per cold start;
- replicas beyond the first: the requests beyond the others' capacity.

Promises (schedules, `min_replicas`, warm requests) are not priced: `policies.budget` grants them first.
Pure: state in, seconds out.
"""

from __future__ import annotations

from policies import currency
from policies.forecast import occupancy_p
from policies.types import Decision, GapHistory, LoadSnapshot, ScalingSpec, SeasonalForecast


def idle_release_wait_s(
    gaps: GapHistory | None,
    spec: ScalingSpec,
    *,
    idle_s: float,
    window_s: float,
    last_activity_s: float,
    utc_offset_s: float = 0.0,
) -> float:
    """Expected user-seconds of waiting caused by releasing now a replica idle for `idle_s` that the
    keep-alive would hold until `window_s` after its last activity."""
    if window_s <= idle_s:
        return 0.0
    counts, waits, _n = currency.effective(
        gaps, currency.bucket(last_activity_s, utc_offset_s), spec.expected_cold_start_s
    )
    mids = currency.MIDS_S
    alive = mids > idle_s
    total = float(counts[alive].sum())
    if total <= 0:
        return 0.0
    return float(waits[alive & (mids <= window_s)].sum()) / total


def release_waits_s(
    decision: Decision,
    load: LoadSnapshot,
    spec: ScalingSpec,
    now_s: float,
    *,
    gaps: GapHistory | None = None,
    forecast: SeasonalForecast | None = None,
) -> tuple[float, ...]:
    """Per replica of `decision` (first to last), the expected user-seconds of waiting its release causes."""
    cold_s = spec.expected_cold_start_s
    busy = load.queue_depth + load.in_flight
    per = max(spec.target_concurrency, 1e-9)
    out: list[float] = []
    for rank in range(1, decision.replicas + 1):
        # Requests that the replicas before this one cannot take would wait for a new one.
        wait_s = min(per, max(0.0, busy - (rank - 1) * per)) * cold_s
        if rank == 1 and busy > 0:
            # The burst behind the waiting requests waits too: the model's learnt wait per cold start.
            wait_s += currency.wait_per_cold_s(gaps, cold_s)
        elif rank == 1:
            wait_s = max(wait_s, _idle_wait_s(decision, load, spec, now_s, gaps, forecast))
        if rank == 1:
            wait_s = max(wait_s, _forecast_wait_s(decision, spec, now_s, gaps, forecast))
        out.append(wait_s)
    return tuple(out)


def _idle_wait_s(
    decision: Decision,
    load: LoadSnapshot,
    spec: ScalingSpec,
    now_s: float,
    gaps: GapHistory | None,
    forecast: SeasonalForecast | None,
) -> float:
    if decision.keepalive_s is None or load.last_activity_s is None:
        return 0.0
    return idle_release_wait_s(
        gaps,
        spec,
        idle_s=max(0.0, now_s - load.last_activity_s),
        window_s=decision.keepalive_s,
        last_activity_s=load.last_activity_s,
        utc_offset_s=forecast.utc_offset_s if forecast is not None else 0.0,
    )


def _forecast_wait_s(
    decision: Decision, spec: ScalingSpec, now_s: float, gaps: GapHistory | None, forecast: SeasonalForecast | None
) -> float:
    if forecast is None or not any(r.policy == "forecast" and r.replicas > 0 for r in decision.reasons):
        return 0.0
    chances = [p for t in (now_s, now_s + spec.expected_cold_start_s) if (p := occupancy_p(forecast, t)) is not None]
    if not chances:
        return 0.0
    return max(chances) * currency.wait_per_cold_s(gaps, spec.expected_cold_start_s)


__all__ = ["idle_release_wait_s", "release_waits_s"]
