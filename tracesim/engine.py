"""The virtual-clock replay of one model under one policy, driving `policies.combine.decide`.

The loop is event-driven, which for a pure decision function is equivalent to ticking continuously:
it calls `decide(state, now_s)` at every instant its answer can change, namely
- a request arriving while nothing is held (the wake-from-zero path: the request waits, then a cold
  start begins at once),
- `Decision.recheck_at_s` (forecast slot boundaries minus the lead, schedule windows),
- the keep-alive deadline `keepalive_s` after the last activity, found directly in the arrival array,
- window boundaries whenever more than one replica is involved (the load changes per window).
Requests between those instants are handled in bulk with numpy. Learning (idle-time histogram,
seasonal forecast) folds every finished 600-s window in before each decision, so a decision at time t
sees exactly the history before t.

Definitions used for the metrics:
- cold request: it arrives when no replica is ready (held but still queued or loading, or none); it
  waits until the first replica is ready, and that wait is its extra wait.
- GPU-hours held: from the end of the Slurm queue wait (the job runs and holds its GPUs) until the
  replica is released, times GPUs per replica. Replicas beyond the first are counted from the decision.
- idle GPU-hours: held GPU time during which the replica serves nothing: loading time, plus time with
  no request in flight. For the first replica that is measured from the arrivals and service times (the
  union of [arrival, arrival + service]); replicas beyond the first are busy for the share of the
  window's mean load (rate x mean service, Little's law) that exceeds one replica's target concurrency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
import numpy.typing as npt

from policies import currency
from policies.combine import decide
from policies.forecast import covers, new_forecast, observe_slot
from policies.idle import observe_idle
from policies.types import (
    Decision,
    GapHistory,
    IdleHistogram,
    LoadSnapshot,
    ModelState,
    Occurrence,
    PolicyMix,
    ScalingSpec,
    SeasonalForecast,
)
from tracesim.arrivals import Arrivals
from tracesim.coldstart import ColdStartModel
from tracesim.trace import WINDOW_S

FloatArray = npt.NDArray[np.float64]
_MIN_STEP_S = 1e-3
_SCAN_CHUNK = 4096


@dataclass
class ModelResult:
    """What one model did under one policy."""

    model: str
    policy: str
    requests: float = 0.0
    cold_requests: float = 0.0
    cold_starts: int = 0
    gpu_s: float = 0.0
    idle_gpu_s: float = 0.0
    cold_waits_s: list[FloatArray] = field(default_factory=list)
    cold_weights: list[FloatArray] = field(default_factory=list)
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    events: list[tuple[float, int, str]] = field(default_factory=list)
    cold_arrivals_s: list[FloatArray] = field(default_factory=list)

    @property
    def cold_fraction(self) -> float:
        return self.cold_requests / self.requests if self.requests > 0 else 0.0


@dataclass(frozen=True)
class Prepared:
    """Per-model arrays shared by every policy's replay."""

    times_s: FloatArray
    weights: FloatArray
    service_s: FloatArray
    ends_s: FloatArray
    next_s: FloatArray
    busy_prefix_s: FloatArray
    weight_prefix: FloatArray
    idle_gaps_s: FloatArray
    gap_hits: FloatArray  # requests within one expected cold start from each arrival on
    gap_wait_hits: FloatArray  # the same, each weighted by the share of the cold start it would wait
    arrival_gaps_s: FloatArray  # from the previous arrival (what the gateway records as an idle gap)
    recorded_waits_s: FloatArray  # per arrival opening a gap: the wait the gateway records for it
    window_counts: FloatArray
    window_bounds: npt.NDArray[np.int64]
    window_need: npt.NDArray[np.int64]
    next_multi_s: FloatArray  # per window: start of the next window needing more than one replica
    window_inflight: FloatArray
    dense: npt.NDArray[np.bool_]
    max_service_s: float
    end_s: float


def prepare(arr: Arrivals, end_s: float, spec: ScalingSpec, cap: int) -> Prepared:
    """Precompute prefix sums and per-window figures for `arr`."""
    a = arr.times_s
    ends = a + arr.service_s
    nxt = np.append(a[1:], np.inf)
    # Busy time of the first replica: each request keeps it busy until it ends or the next arrives
    # (the union of service intervals when they do not nest). A sample standing for w requests
    # carries w requests' worth of service.
    busy = np.minimum(arr.service_s * arr.weights, nxt - a)
    running_end = np.maximum.accumulate(ends) if ends.size else ends
    prev_end = np.concatenate(([-np.inf], running_end[:-1])) if ends.size else ends
    weight_prefix = np.concatenate(([0.0], np.cumsum(arr.weights)))
    nwin = arr.window_counts.size
    bounds = np.searchsorted(a, np.arange(nwin + 1) * WINDOW_S, side="left").astype(np.int64)
    mean_service_s = float(arr.service_s.mean()) if arr.service_s.size else spec.mean_service_s
    inflight = arr.window_counts * mean_service_s / WINDOW_S
    need = np.ceil(inflight / spec.target_concurrency - 1e-9).astype(np.int64)
    multi = np.flatnonzero(need > 1)
    next_multi = np.full(nwin, np.inf)
    if multi.size:
        pos = np.searchsorted(multi, np.arange(nwin) + 1, side="left")
        found = pos < multi.size
        next_multi[found] = multi[pos[found]] * WINDOW_S
    # A request arriving d seconds after the one that starts a cold start waits (cold - d) of it.
    cold_s = spec.expected_cold_start_s
    hit_end = np.searchsorted(a, a + cold_s, side="left")
    wt_prefix = np.concatenate(([0.0], np.cumsum(arr.weights * a)))
    starts = np.arange(a.size)
    hit_w = weight_prefix[hit_end] - weight_prefix[starts]
    hit_wt = wt_prefix[hit_end] - wt_prefix[starts]
    gap_wait_hits = np.maximum(hit_w - (hit_wt - a * hit_w) / cold_s, 0.0)
    arrival_gaps_s = a - np.concatenate(([-np.inf], a[:-1])) if a.size else a
    # Inside a sub-sampled window (more than `cap` requests) the gaps between samples are artefacts of
    # the sampling, not idleness a gateway would see: they are not recorded as gaps.
    win = np.minimum((a // WINDOW_S).astype(np.int64), max(nwin - 1, 0))
    same_dense = np.zeros(a.size, dtype=bool)
    if a.size > 1 and nwin:
        same_dense[1:] = (win[1:] == win[:-1]) & (arr.window_counts[win[1:]] > cap)
    arrival_gaps_s = np.where(same_dense, 0.0, arrival_gaps_s)
    recorded = _recorded_waits_s(a, arr.weights, arrival_gaps_s, hit_end, weight_prefix, wt_prefix, cold_s)
    return Prepared(
        times_s=a,
        weights=arr.weights,
        service_s=arr.service_s,
        ends_s=ends,
        next_s=nxt,
        busy_prefix_s=np.concatenate(([0.0], np.cumsum(busy))),
        weight_prefix=weight_prefix,
        idle_gaps_s=a - prev_end,
        gap_hits=weight_prefix[hit_end] - weight_prefix[np.arange(a.size)],
        gap_wait_hits=gap_wait_hits,
        arrival_gaps_s=arrival_gaps_s,
        recorded_waits_s=recorded,
        window_counts=arr.window_counts,
        window_bounds=bounds,
        window_need=np.maximum(need, 0),
        next_multi_s=next_multi,
        window_inflight=inflight,
        dense=arr.window_counts > cap,
        max_service_s=float(arr.service_s.max()) if arr.service_s.size else 0.0,
        end_s=end_s,
    )


def _recorded_waits_s(
    a: FloatArray,
    weights: FloatArray,
    gaps_s: FloatArray,
    hit_end: npt.NDArray[np.int64],
    weight_prefix: FloatArray,
    wt_prefix: FloatArray,
    cold_s: float,
) -> FloatArray:
    """The wait `warmpool.gaps` records for each gap-opening arrival (0 elsewhere), exactly as it does.

    The opener counts a whole cold start; every later arrival within one cold start of it counts the
    rest, up to and including the next opener (the gateway keeps one gap open at a time).
    """
    out = np.zeros(a.size)
    openers = np.flatnonzero(np.isfinite(gaps_s) & (gaps_s >= currency.GAP_MIN_S))
    if openers.size == 0:
        return out
    next_opener = np.append(openers[1:], a.size)
    hi = np.minimum(hit_end[openers], next_opener + 1)
    lo = openers + 1
    hi = np.maximum(hi, lo)
    w = weight_prefix[hi] - weight_prefix[lo]
    wt = wt_prefix[hi] - wt_prefix[lo]
    follow = np.maximum(w * cold_s - (wt - a[openers] * w), 0.0)
    out[openers] = weights[openers] * cold_s + follow
    return out


class _Replay:
    """Mutable replay state for one (model, policy); `run` drives it to the end of the trace."""

    def __init__(
        self,
        name: str,
        policy: str,
        prep: Prepared,
        mix: PolicyMix,
        spec: ScalingSpec,
        cold: ColdStartModel,
        rng: np.random.Generator,
        occurrences: tuple[Occurrence, ...],
        record: bool,
        shared: dict[tuple[str, int], object] | None = None,
    ) -> None:
        self.p = prep
        self.shared = shared
        self.mix = mix
        self.spec = spec
        self.cold = cold
        self.rng = rng
        self.occurrences = occurrences
        self.record = record
        self.res = ModelResult(model=name, policy=policy)
        self.hist = IdleHistogram()
        self.gaps: GapHistory | None = currency.empty_history() if mix.keepalive == "currency" else None
        # The clairvoyant bound: letting go before arrival j costs a reload plus the priced wait.
        self.release_cost_s = (
            spec.reload_idle_s + mix.exchange_rate * prep.gap_wait_hits * spec.expected_cold_start_s
            if mix.keepalive == "oracle"
            else None
        )
        # The same, for the arrival after each one (nothing to wait for after the last).
        self.release_next_s = None if self.release_cost_s is None else np.append(self.release_cost_s[1:], 0.0)
        self.fc: SeasonalForecast | None = new_forecast(WINDOW_S) if mix.forecast else None
        self.learnt_windows = 0
        self.last_activity_s: float | None = None
        self.held = 0
        self.ready_at_s = math.inf
        self.gpu_from_s = math.inf
        self.started_at_s = math.inf
        self.i = 0  # next arrival not yet handled
        self.t = 0.0
        self.dec = Decision(replicas=0, reasons=())

    # -- learning ---------------------------------------------------------------------------
    def learn(self, t: float) -> None:
        """Fold what was observed before `t` into the gap history and forecast now (they are otherwise
        folded when a decision needs them): a runner reading `gaps` at `t` then sees what a gateway had
        recorded by `t`. Decisions do not change: each folds at least this much before it is made."""
        self._learn_until(t)

    def _learn_until(self, t: float) -> None:
        upto = min(int(t // WINDOW_S), self.p.window_counts.size)
        p = self.p
        if upto <= self.learnt_windows:
            return
        net_of_forecast = self.mix.keepalive == "histogram" and self.mix.net_of_forecast and self.mix.forecast
        if self.shared is not None and not net_of_forecast:
            self._learn_shared(upto)
            return
        lo, hi = int(p.window_bounds[self.learnt_windows]), int(p.window_bounds[upto])
        hits = (p.gap_wait_hits if self.mix.price_waits else p.gap_hits)[lo:hi]
        if net_of_forecast and hi > lo:
            hits = hits.copy()
        if self.fc is not None:
            for w in range(self.learnt_windows, upto):
                if net_of_forecast and covers(
                    self.fc,
                    self.spec,
                    w * WINDOW_S,
                    threshold=self.mix.prewarm_threshold,
                ):
                    # The forecast (as it stood before this window) pre-warmed for these arrivals: a
                    # cold start after their gaps is not the keep-alive's to insure against.
                    hits[int(p.window_bounds[w]) - lo : int(p.window_bounds[w + 1]) - lo] = 0.0
                self.fc = observe_slot(self.fc, w * WINDOW_S, float(p.window_counts[w]))
        if self.mix.keepalive == "histogram" and hi > lo:
            # Adding counts commutes, so all windows finished since the last decision go in at once.
            self.hist = observe_idle(self.hist, p.idle_gaps_s[lo:hi], self.spec, hits)
        if self.gaps is not None and hi > lo:
            self._learn_gaps(lo, hi)
        self.learnt_windows = upto

    def _learn_shared(self, upto: int) -> None:
        """`_learn_until` one window at a time, sharing each step with the model's other policies.

        What a policy learns (forecast, idle histogram, gap history) does not depend on its decisions,
        so every policy of a model folds the same windows into the same states: the first to reach a
        window computes the step, the others take it from `shared`, keyed by kind and window.
        """
        p, shared = self.p, self.shared
        assert shared is not None
        histogram = self.mix.keepalive == "histogram"
        hits_all = p.gap_wait_hits if self.mix.price_waits else p.gap_hits
        idle_kind = "idle-waits" if self.mix.price_waits else "idle-hits"
        for w in range(self.learnt_windows, upto):
            lo, hi = int(p.window_bounds[w]), int(p.window_bounds[w + 1])
            if self.fc is not None:
                fc = shared.get(("fc", w + 1))
                if fc is None:
                    fc = observe_slot(self.fc, w * WINDOW_S, float(p.window_counts[w]))
                    shared[("fc", w + 1)] = fc
                self.fc = cast(SeasonalForecast, fc)
            if histogram and hi > lo:
                hist = shared.get((idle_kind, w + 1))
                if hist is None:
                    hist = observe_idle(self.hist, p.idle_gaps_s[lo:hi], self.spec, hits_all[lo:hi])
                    shared[(idle_kind, w + 1)] = hist
                self.hist = cast(IdleHistogram, hist)
            if self.gaps is not None and hi > lo:
                gaps = shared.get(("gaps", w + 1))
                if gaps is None:
                    self._learn_gaps(lo, hi)
                    shared[("gaps", w + 1)] = self.gaps
                else:
                    self.gaps = cast(GapHistory, gaps)
        self.learnt_windows = upto

    def _learn_gaps(self, lo: int, hi: int) -> None:
        """Fold arrivals [lo, hi) into the gap history, as the gateway records them (`warmpool.gaps`)."""
        p = self.p
        gaps = p.arrival_gaps_s[lo:hi]
        keep = np.isfinite(gaps) & (gaps >= currency.GAP_MIN_S)
        if not keep.any():
            return
        idx = np.flatnonzero(keep) + lo
        starts = p.times_s[idx] - p.arrival_gaps_s[idx]
        cells = currency.history_cells(starts, p.arrival_gaps_s[idx])
        waits = p.recorded_waits_s[idx]
        assert self.gaps is not None
        self.gaps = currency.observe(self.gaps, cells.tolist(), np.ones(idx.size).tolist(), waits.tolist())

    def _oracle_hold_s(self, t: float) -> float:
        """The clairvoyant window now: just past the next arrival if the gap is worth holding, else 0.

        A sub-sampled window is busy throughout (its load is its mean): held to its end.
        """
        p = self.p
        assert self.release_cost_s is not None
        if self.last_activity_s is None:
            return 0.0
        w = min(int(t // WINDOW_S), p.window_counts.size - 1)
        if w >= 0 and p.dense[w]:
            return (w + 1) * WINDOW_S - self.last_activity_s + 1.0
        if self.i >= p.times_s.size:
            return 0.0
        gap_s = float(p.times_s[self.i]) - self.last_activity_s
        if gap_s <= float(self.release_cost_s[self.i]):
            return max(gap_s, 0.0) + 1.0
        return 0.0

    # -- state -------------------------------------------------------------------------------
    def _in_flight(self, t: float) -> float:
        p = self.p
        w = min(int(t // WINDOW_S), p.window_counts.size - 1)
        if w >= 0 and p.dense[w]:
            return float(p.window_inflight[w])
        j = int(np.searchsorted(p.times_s, t, side="right"))
        k = int(np.searchsorted(p.times_s, t - p.max_service_s, side="right"))
        if j <= k:
            return 0.0
        return float(p.weights[k:j][p.ends_s[k:j] > t].sum())

    def _state(self, t: float, queued: int = 0) -> ModelState:
        ready = self.held if t >= self.ready_at_s else 0
        in_flight = self._in_flight(t) if ready else 0.0
        if in_flight > 0:
            # Requests in flight are activity now (in busy windows the load is the window's mean,
            # and the sampled arrivals around t may all have ended).
            self.last_activity_s = t if self.last_activity_s is None else max(self.last_activity_s, t)
        oldest_s = 0.0
        if self.held > 0 and t < self.ready_at_s:
            lo = int(np.searchsorted(self.p.times_s, self.started_at_s, side="left"))
            queued = max(queued, self.i - lo)
            if queued:
                oldest_s = t - float(self.p.times_s[lo])
        window_s = self.mix.avg_window_s
        k = int(np.searchsorted(self.p.times_s, t - window_s, side="right"))
        recent = float(self.p.weight_prefix[self.i] - self.p.weight_prefix[min(k, self.i)]) / window_s
        load = LoadSnapshot(
            queue_depth=queued,
            oldest_wait_s=oldest_s,
            in_flight=in_flight,
            ready_replicas=ready,
            held_replicas=self.held,
            last_activity_s=self.last_activity_s,
            recent_rate_per_s=recent,
        )
        mix = self.mix
        if self.release_cost_s is not None:
            mix = replace(mix, fixed_keepalive_s=self._oracle_hold_s(t))
        return ModelState(
            spec=self.spec,
            load=load,
            idle=self.hist,
            forecast=self.fc,
            occurrences=self.occurrences,
            mix=mix,
            gaps=self.gaps,
        )

    def _decide(self, t: float, queued: int = 0) -> Decision:
        self._learn_until(t)
        dec = decide(self._state(t, queued), t)
        if queued and dec.replicas == 0:
            # A policy bug must not strand waiting requests in the replay; the unit tests pin this.
            dec = replace(dec, replicas=1)
        return dec

    def _apply(self, t: float, dec: Decision) -> None:
        before = self.held
        if dec.replicas == 0:
            self.held = 0
            self.ready_at_s = self.gpu_from_s = self.started_at_s = math.inf
        elif self.held == 0:
            queue_s, load_s = self.cold.sample(self.rng)
            self.held = dec.replicas
            self.started_at_s = t
            self.gpu_from_s = t + queue_s
            self.ready_at_s = t + queue_s + load_s
            self.res.cold_starts += 1
        else:
            self.held = dec.replicas
        if self.record and self.held != before:
            self.res.timeline.append((t, self.held, self.ready_at_s))
            self.res.events.append((t, self.held, dec.explain()))

    # -- the loop ----------------------------------------------------------------------------
    def _drain_candidate(self, t: float, horizon: float, keepalive_s: float) -> float:
        """The first instant in [t, horizon) at which the keep-alive runs out, or inf."""
        p = self.p
        base = self.last_activity_s if self.last_activity_s is not None else t
        j_hi = int(np.searchsorted(p.times_s, horizon, side="left"))
        if self.i >= j_hi or p.times_s[self.i] > base + keepalive_s:
            return base + keepalive_s
        # Scan a bounded chunk: a model busy for days would otherwise be rescanned from here to the
        # end at every stop. Not finding the deadline in the chunk just adds one more stop.
        j_scan = min(j_hi, self.i + _SCAN_CHUNK)
        seg_end = np.maximum.accumulate(np.maximum(p.ends_s[self.i : j_scan], base))
        if self.release_cost_s is not None:
            # The clairvoyant lets go at the end of the first gap not worth holding, at once.
            assert self.release_next_s is not None
            cost = self.release_next_s[self.i : j_scan]
            mask = p.next_s[self.i : j_scan] - seg_end > cost
            keepalive_s = 0.0
        else:
            mask = p.next_s[self.i : j_scan] > seg_end + keepalive_s
        if not mask.any():
            return float(p.times_s[j_scan]) if j_scan < j_hi else math.inf
        return float(seg_end[int(np.argmax(mask))]) + keepalive_s

    def _serve(self, t: float, horizon: float) -> None:
        """Account [t, horizon) with the current replicas and hand the arrivals in it."""
        p = self.p
        j = int(np.searchsorted(p.times_s, horizon, side="left"))
        i = self.i
        if j > i:
            aa = p.times_s[i:j]
            cold = aa < self.ready_at_s
            if cold.any():
                ww = p.weights[i:j][cold]
                self.res.cold_requests += float(ww.sum())
                self.res.cold_waits_s.append(self.ready_at_s - aa[cold])
                self.res.cold_weights.append(ww)
                if self.record:
                    self.res.cold_arrivals_s.append(aa[cold])
            ends = p.ends_s[i:j]
            if cold.any():
                # A cold request is served once the replica is ready, and ends that much later.
                ends = np.where(cold, self.ready_at_s + p.service_s[i:j], ends)
            last = float(ends.max())
            self.last_activity_s = last if self.last_activity_s is None else max(self.last_activity_s, last)
        length = horizon - t
        gpu = max(0.0, horizon - max(t, self.gpu_from_s))
        ready_len = max(0.0, horizon - max(t, self.ready_at_s))
        busy = min(ready_len, float(p.busy_prefix_s[j] - p.busy_prefix_s[i]))
        gpus = self.spec.gpus_per_replica
        self.res.gpu_s += gpu * gpus
        self.res.idle_gpu_s += (gpu - busy) * gpus
        if self.held > 1:
            extra = self.held - 1
            w = min(int(t // WINDOW_S), p.window_counts.size - 1)
            busy_extra = min(extra, max(0, int(p.window_need[w]) - 1))
            self.res.gpu_s += extra * length * gpus
            self.res.idle_gpu_s += (extra - busy_extra) * length * gpus
        self.i = j

    def run(self) -> ModelResult:
        self.start()
        self.advance(self.p.end_s)
        return self.finish()

    def start(self) -> None:
        """The decision at time 0; `advance` then replays up to any instant, `finish` closes the result."""
        self.t = 0.0
        self.dec = self._decide(0.0)
        if self.dec.replicas > 0:
            # Policies that are warm at the start (always-on) start warm, not with a cold start.
            self.held = self.dec.replicas
            self.ready_at_s = self.gpu_from_s = self.started_at_s = 0.0

    def set_rate(self, rate: float) -> None:
        """A new exchange rate from now on (the budget's multiplier moved)."""
        self.mix = replace(self.mix, exchange_rate=rate)

    def finish(self) -> ModelResult:
        self.res.requests = float(self.p.weight_prefix[-1])
        return self.res

    def advance(self, stop_s: float) -> None:
        """Replay until `stop_s` (or the trace's end); resuming decides afresh, as a tick would."""
        p = self.p
        end_s = min(stop_s, p.end_s)
        n = p.times_s.size
        t, dec = self.t, self.dec
        if 0.0 < t < end_s:
            dec = self._decide(t)
            self._apply(t, dec)
        while t < end_s:
            if self.held == 0:
                arrival_s = float(p.times_s[self.i]) if self.i < n else math.inf
                nxt = min(arrival_s, dec.recheck_at_s, end_s)
                if arrival_s <= nxt and arrival_s < end_s:
                    t = arrival_s
                    dec = self._decide(t, queued=1)
                    self._apply(t, dec)
                    # The waiting requests pin the replica until it is ready (never drain while
                    # requests wait), so the next decision that can matter is at readiness.
                    ready_s = min(self.ready_at_s, end_s)
                    self._serve(t, ready_s)
                    t = ready_s
                    if t >= end_s:
                        break
                    dec = self._decide(t)
                    self._apply(t, dec)
                    continue
                t = max(nxt, t + _MIN_STEP_S)
            else:
                horizon = min(dec.recheck_at_s, end_s)
                w = int(t // WINDOW_S)
                w_end = (w + 1) * WINDOW_S
                if self.held > 1:
                    horizon = min(horizon, w_end)
                elif w < p.next_multi_s.size:
                    # The load will ask for more replicas there: stop to let the policy see it.
                    horizon = min(horizon, float(p.next_multi_s[w]))
                if dec.keepalive_s is not None:
                    horizon = min(horizon, self._drain_candidate(t, horizon, dec.keepalive_s))
                horizon = max(horizon, t + _MIN_STEP_S)
                self._serve(t, min(horizon, end_s))
                t = horizon
            if t >= end_s:
                break
            dec = self._decide(t)
            self._apply(t, dec)
        self.t, self.dec = t, dec


def simulate_model(
    name: str,
    policy: str,
    prep: Prepared,
    mix: PolicyMix,
    spec: ScalingSpec,
    cold: ColdStartModel,
    rng: np.random.Generator,
    *,
    occurrences: tuple[Occurrence, ...] = (),
    record: bool = False,
) -> ModelResult:
    """Replay one model's arrivals under one policy mix."""
    return _Replay(name, policy, prep, mix, spec, cold, rng, occurrences, record).run()
