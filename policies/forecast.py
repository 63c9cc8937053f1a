"""Time-of-day / day-of-week forecast: a seasonal EWMA per slot, learnt online.

For every slot of the day and of the week the state keeps an exponentially weighted average of two
things: whether the slot saw at least one request (its occupancy probability) and its request rate.
The prediction for a slot averages the day and week estimates when both have been seen (the week
slot knows weekends, the day slot learns after one day), and is None when neither has.

A slot is pre-warmed when its occupancy probability p reaches the break-even

    p * value >= (1 - p) * slot_s     <=>     p >= slot_s / (slot_s + value)

(warming an empty slot idles `slot_s`; warming a used one saves a cold start worth `value`, per
event), and the replica is asked for `lead_s` (the expected cold start) before the slot begins.
"""

from __future__ import annotations

import math
from dataclasses import replace

from policies.types import ScalingSpec, SeasonalForecast

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


def new_forecast(slot_s: float = 600.0, alpha: float = 0.3, utc_offset_s: float = 0.0) -> SeasonalForecast:
    """An empty forecast: every slot unseen."""
    day_n = int(DAY_S // slot_s)
    week_n = int(WEEK_S // slot_s)
    return SeasonalForecast(
        slot_s=slot_s,
        alpha=alpha,
        utc_offset_s=utc_offset_s,
        day_p=(0.0,) * day_n,
        day_rate=(0.0,) * day_n,
        day_seen=(0,) * day_n,
        week_p=(0.0,) * week_n,
        week_rate=(0.0,) * week_n,
        week_seen=(0,) * week_n,
    )


def slot_index(fc: SeasonalForecast, t_s: float) -> tuple[int, int]:
    """(day slot, week slot) containing instant `t_s`."""
    local_s = t_s + fc.utc_offset_s
    return int((local_s % DAY_S) // fc.slot_s), int((local_s % WEEK_S) // fc.slot_s)


def _ewma(values: tuple[float, ...], seen: tuple[int, ...], i: int, x: float, alpha: float) -> tuple[float, ...]:
    # The first observation of a slot is taken as is: starting from 0 would read as "no demand".
    new = x if seen[i] == 0 else (1 - alpha) * values[i] + alpha * x
    return (*values[:i], new, *values[i + 1 :])


def _bump(seen: tuple[int, ...], i: int) -> tuple[int, ...]:
    return (*seen[:i], seen[i] + 1, *seen[i + 1 :])


def observe_slot(fc: SeasonalForecast, slot_start_s: float, count: float) -> SeasonalForecast:
    """Fold one finished slot (its start and request count) into the forecast; pure."""
    d, w = slot_index(fc, slot_start_s)
    occupied = 1.0 if count > 0 else 0.0
    rate = count / fc.slot_s
    return replace(
        fc,
        day_p=_ewma(fc.day_p, fc.day_seen, d, occupied, fc.alpha),
        day_rate=_ewma(fc.day_rate, fc.day_seen, d, rate, fc.alpha),
        day_seen=_bump(fc.day_seen, d),
        week_p=_ewma(fc.week_p, fc.week_seen, w, occupied, fc.alpha),
        week_rate=_ewma(fc.week_rate, fc.week_seen, w, rate, fc.alpha),
        week_seen=_bump(fc.week_seen, w),
    )


def occupancy_p(fc: SeasonalForecast, t_s: float) -> float | None:
    """P(at least one request in the slot containing `t_s`); None when the slot was never seen."""
    d, w = slot_index(fc, t_s)
    day = fc.day_p[d] if fc.day_seen[d] > 0 else None
    week = fc.week_p[w] if fc.week_seen[w] > 0 else None
    if day is None:
        return week
    if week is None:
        return day
    return 0.5 * (day + week)


def expected_rate_per_s(fc: SeasonalForecast, t_s: float) -> float | None:
    """Forecast request rate in the slot containing `t_s`; None when never seen."""
    d, w = slot_index(fc, t_s)
    day = fc.day_rate[d] if fc.day_seen[d] > 0 else None
    week = fc.week_rate[w] if fc.week_seen[w] > 0 else None
    if day is None:
        return week
    if week is None:
        return day
    return 0.5 * (day + week)


def cold_start_cost_s(spec: ScalingSpec, delayed_requests: float) -> float:
    """What one cold start costs, in idle GPU-seconds: per event plus per request it delays."""
    event_s = spec.cold_start_value_s if spec.keepalive_event_value_s is None else spec.keepalive_event_value_s
    return event_s + spec.cold_request_value_s * delayed_requests


def break_even_p(spec: ScalingSpec, slot_s: float) -> float:
    """The occupancy probability above which warming a slot pays for itself.

    Pre-warming prices a used slot's cold start per event (`cold_start_value_s`). Principle: a bet on
    a 10-minute slot's coarse forecast is priced at the one wait it surely saves, the first request's
    (one expected cold start, at the one exchange rate; the simulator's spec sets exactly that), not
    at the burst behind it, which a slot's mean rate cannot tell from a trickle. Pricing the burst too
    (rate x cold start / 2 more requests) pre-warmed heavy models so often on ServeGen m-small that
    idle rose 17% for 37% fewer cold requests (see tracesim/README.md).
    """
    return slot_s / (slot_s + spec.cold_start_value_s)


def covers(fc: SeasonalForecast, spec: ScalingSpec, t_s: float, *, threshold: float | None = None) -> bool:
    """Whether the forecast pre-warms for an arrival at `t_s`: its slot clears the break-even.

    A replica is then asked for `expected_cold_start_s` before the slot begins and held through it, so
    the arrival finds it warm (in expectation) whatever the keep-alive did before.
    """
    return prewarm(fc, spec, t_s, threshold=threshold)[0] > 0


def next_slot_start_s(fc: SeasonalForecast, t_s: float) -> float:
    """The first slot boundary strictly after `t_s`."""
    local_s = t_s + fc.utc_offset_s
    return (math.floor(local_s / fc.slot_s) + 1) * fc.slot_s - fc.utc_offset_s


def prewarm(
    fc: SeasonalForecast, spec: ScalingSpec, now_s: float, *, threshold: float | None = None
) -> tuple[int, str, float]:
    """Replicas the forecast asks for now: (replicas, reason, recheck_at_s).

    Looks at the current slot and at the slot `expected_cold_start_s` ahead, so that a replica asked
    for now is ready when that slot begins.
    """
    lead_s = spec.expected_cold_start_s
    recheck_s = min(next_slot_start_s(fc, now_s), next_slot_start_s(fc, now_s + lead_s) - lead_s)
    seen = False
    best_p, best_theta = 0.0, 1.0
    for t, which in ((now_s, "this slot"), (now_s + lead_s, f"slot in {lead_s:.0f}s")):
        p = occupancy_p(fc, t)
        if p is None:
            continue
        seen = True
        theta = break_even_p(spec, fc.slot_s) if threshold is None else threshold
        if p >= theta:
            return 1, f"P(demand in {which})={p:.2f} >= {theta:.2f}", recheck_s
        if p - theta >= best_p - best_theta:
            best_p, best_theta = p, theta
    if not seen:
        return 0, "no history for this time slot", recheck_s
    return 0, f"P(demand)={best_p:.2f} < {best_theta:.2f}", recheck_s


def max_p_between(fc: SeasonalForecast, start_s: float, end_s: float) -> float | None:
    """Highest occupancy probability over the slots touching [start_s, end_s]; None if any is unseen."""
    best = 0.0
    t = start_s
    while True:
        p = occupancy_p(fc, t)
        if p is None:
            return None
        best = max(best, p)
        t = next_slot_start_s(fc, t)
        if t > end_s:
            return best


def max_rate_between(fc: SeasonalForecast, start_s: float, end_s: float) -> float | None:
    """Highest forecast request rate over the slots touching [start_s, end_s]; None if any is unseen."""
    best = 0.0
    t = start_s
    while True:
        r = expected_rate_per_s(fc, t)
        if r is None:
            return None
        best = max(best, r)
        t = next_slot_start_s(fc, t)
        if t > end_s:
            return best
