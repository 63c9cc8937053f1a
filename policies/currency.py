"""One currency for the warm pool: idle GPU-seconds traded against user-seconds of waiting.

The operator states one exchange rate `rate` (idle GPU-seconds worth one user-second of waiting), or
an idle budget that sets it. The default budget is `DEFAULT_BUDGET_SHARE` x what a fixed 10-minute
keep-alive would have spent on the site's recorded gaps: `site_rate` is the largest rate of a grid whose
counterfactual spending on those gaps (`budget_terms`, from the same histories) stays within it;
`budget_rate` does it for one model; a budget in GPU-hours per day is `policies.idle_budget`'s, from
`spend_curve_s` of the gaps recorded. Every term that keeps or starts a replica is priced with the rate:

- Keep-alive: per model, a distribution of idle gaps conditioned on the time of week the gap starts
  (`GapHistory`), with the user-seconds a cold start at each gap's end would have made requests wait.
  Holding through a gap of length g costs g; letting go costs `reload_idle_s` (the next start loads on
  a GPU it holds) plus `rate` x the wait. The window is the K minimising the expected total,

      E[min(g, K)] + P(g > K) * reload_idle_s + rate * E[wait(g); g > K]

  which is where the marginal second of holding (hazard x rate x wait) stops paying for itself.
  One rate for all models equalises that marginal value across them: every model holds exactly while
  one more second of holding saves at least 1/rate user-seconds.
- Pre-warm: the same bet from the other side of a gap. A forecast slot is warmed when its chance of
  demand p satisfies p * rate * W >= (1 - p) * slot + reload_idle_s, W being the model's learnt wait
  per cold start.
- Little history (a new checkpoint, a one-day trace): a time-of-week bucket borrows from the model's
  other buckets (`BUCKET_PSEUDO` gaps), and the model from the population prior (`PRIOR_PSEUDO` gaps of
  `policies.gap_prior`, learnt offline from all models of the tuning traces).

All functions are pure: state and `now_s` in, values (with reasons) out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from policies.gap_prior import PRIOR_COUNTS, PRIOR_WAITS_PER_COLD
from policies.types import GapHistory, ScalingSpec

FloatArray = npt.NDArray[np.float64]

GAP_MIN_S = 60.0
"""Gaps shorter than this are one burst's requests, not idleness: always held, never recorded."""
GAP_RATIO = 1.25
"""Successive gap-bin edges grow by this factor (60 s, 75 s, 94 s, ... ~2.1 days)."""
GAP_BINS = 36
"""Bins below the overflow bin; the last edge is 60 s x 1.25^36 ~ 51 h."""
NBINS = GAP_BINS + 1
DAY_BLOCKS = 6
"""Time-of-day buckets (4 hours each), separately for weekdays and weekends."""
BUCKETS = 2 * DAY_BLOCKS
CELLS = BUCKETS * NBINS
"""Cells of a `GapHistory`: its size, whatever the traffic (444 counts and 444 waits)."""
PRIOR_PSEUDO = 4.0
"""Weight of the population prior, in gaps, when a model's own distribution is formed."""
BUCKET_PSEUDO = 16.0
"""Weight of the model's all-week distribution, in gaps, when one time-of-week bucket's is formed."""
RATE_MIN, RATE_MAX = 1e-4, 1.0
DEFAULT_RATE = 0.03
"""The default exchange rate (idle GPU-seconds per user-second of waiting): the largest rate of the
frontier grid whose idle GPU-hours stay at least 10% below a 10-minute keep-alive's on both tuning halves
(even client ids of ServeGen m-mid and m-small, seed 0); see tracesim/README.md."""

SHADOW_KEEPALIVE_S = 600.0
"""The keep-alive whose idle spending is the default budget: a fixed 10 minutes, the policy replaced."""
DEFAULT_BUDGET_SHARE = 0.9
"""The default idle budget: this share of what `SHADOW_KEEPALIVE_S` would have spent on the site's
recorded gaps (`site_rate`). Chosen on the tuning halves (see tracesim/README.md)."""
DEFAULT_MARGIN = DEFAULT_BUDGET_SHARE
"""The same share for a model budgeted on its own gaps (`budget_rate`, `PolicyMix.budget_margin`)."""
RATE_GRID: FloatArray = 10.0 ** (np.arange(-48, 13, dtype=np.float64) / 12.0)
"""Rates a budget chooses from: 1e-4 .. 10, twelve a decade."""
SITE_RATES: FloatArray = RATE_GRID[RATE_GRID <= RATE_MAX * (1 + 1e-9)]
"""The rates a site budget may choose (above 1 a model would hold hours for a few user-seconds)."""

EDGES_S: FloatArray = GAP_MIN_S * GAP_RATIO ** np.arange(NBINS, dtype=np.float64)
"""Lower edge of every bin; the last bin is the overflow."""
MIDS_S: FloatArray = np.append(np.sqrt(EDGES_S[:-1] * EDGES_S[1:]), 2.0 * EDGES_S[-1])
"""The idle seconds a held gap of each bin costs."""

_DAY_S = 86_400.0
_LOG_RATIO = math.log(GAP_RATIO)


def empty_history() -> GapHistory:
    """A model with no recorded gaps."""
    return GapHistory(counts=(0.0,) * CELLS, waits_s=(0.0,) * CELLS)


def gap_bin(gap_s: float) -> int:
    """The bin of an idle gap of `gap_s` (>= `GAP_MIN_S`)."""
    return min(GAP_BINS, max(0, math.floor(math.log(gap_s / GAP_MIN_S) / _LOG_RATIO + 1e-9)))


def bucket(t_s: float, utc_offset_s: float = 0.0) -> int:
    """The time-of-week bucket of instant `t_s`: 4-hour block of the local day, weekday or weekend."""
    local_s = t_s + utc_offset_s
    day = math.floor(local_s / _DAY_S)
    weekend = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday: day 0 has weekday index 3
    block = min(DAY_BLOCKS - 1, int((local_s % _DAY_S) // (_DAY_S / DAY_BLOCKS)))
    return (DAY_BLOCKS if weekend else 0) + block


def cell(start_s: float, gap_s: float, utc_offset_s: float = 0.0) -> int:
    """The `GapHistory` cell of a gap that began at `start_s` and lasted `gap_s`."""
    return bucket(start_s, utc_offset_s) * NBINS + gap_bin(gap_s)


def observe(hist: GapHistory, cells: Iterable[int], counts: Iterable[float], waits_s: Iterable[float]) -> GapHistory:
    """`hist` with gaps (and waits) added to the given cells; pure. Adding commutes, so order is free."""
    c = np.asarray(hist.counts, dtype=np.float64).copy()
    w = np.asarray(hist.waits_s, dtype=np.float64).copy()
    idx = np.asarray(list(cells), dtype=np.int64)
    if idx.size == 0:
        return hist
    if idx.min() < 0 or idx.max() >= CELLS:
        raise ValueError(f"gap cell out of range 0..{CELLS - 1}")
    np.add.at(c, idx, np.asarray(list(counts), dtype=np.float64))
    np.add.at(w, idx, np.asarray(list(waits_s), dtype=np.float64))
    return GapHistory(counts=tuple(c.tolist()), waits_s=tuple(w.tolist()))


def history_cells(starts_s: FloatArray, gaps_s: FloatArray, utc_offset_s: float = 0.0) -> npt.NDArray[np.int64]:
    """`cell` for many gaps at once (the simulator's bulk path; same arithmetic)."""
    local = starts_s + utc_offset_s
    day = np.floor(local / _DAY_S)
    weekend = np.mod(day + 3, 7) >= 5
    block = np.minimum(DAY_BLOCKS - 1, (np.mod(local, _DAY_S) // (_DAY_S / DAY_BLOCKS)).astype(np.int64))
    bins = np.clip(np.floor(np.log(gaps_s / GAP_MIN_S) / _LOG_RATIO + 1e-9), 0, GAP_BINS).astype(np.int64)
    return (np.where(weekend, DAY_BLOCKS, 0) + block) * NBINS + bins


def effective(hist: GapHistory | None, bucket_index: int | None, cold_s: float) -> tuple[FloatArray, FloatArray, float]:
    """Pseudo-counts of gaps per bin and their waits (user-s) for one bucket, shrunk; and the model's gap count.

    bucket <- model's all-week distribution (`BUCKET_PSEUDO`) <- population prior (`PRIOR_PSEUDO`).
    `bucket_index` None: the all-week distribution.
    """
    prior_c = np.asarray(PRIOR_COUNTS, dtype=np.float64)
    prior_w = np.asarray(PRIOR_WAITS_PER_COLD, dtype=np.float64) * cold_s
    if hist is None:
        return PRIOR_PSEUDO * prior_c, PRIOR_PSEUDO * prior_w, 0.0
    c = np.asarray(hist.counts, dtype=np.float64).reshape(BUCKETS, NBINS)
    w = np.asarray(hist.waits_s, dtype=np.float64).reshape(BUCKETS, NBINS)
    model_c = c.sum(axis=0) + PRIOR_PSEUDO * prior_c
    model_w = w.sum(axis=0) + PRIOR_PSEUDO * prior_w
    n_model = float(c.sum())
    if bucket_index is None:
        return model_c, model_w, n_model
    scale = BUCKET_PSEUDO / float(model_c.sum())
    return c[bucket_index] + scale * model_c, w[bucket_index] + scale * model_w, n_model


def keepalive_s(
    hist: GapHistory | None, spec: ScalingSpec, rate: float, start_s: float, utc_offset_s: float = 0.0
) -> tuple[float, str]:
    """The keep-alive window after activity ending at `start_s`, priced at `rate`; with its reason."""
    b = bucket(start_s, utc_offset_s)
    windows, _wait, n_model = _priced(hist, spec, rate)
    k_s = windows[b]
    return k_s, f"currency keep-alive (rate {rate:g}, {n_model:.0f} gaps seen, bucket {b})"


def wait_per_cold_s(hist: GapHistory | None, cold_s: float) -> float:
    """User-seconds one cold start makes requests wait, on average over the model's (shrunk) gaps."""
    c, w, _n = effective(hist, None, cold_s)
    total = float(c.sum())
    return float(w.sum()) / total if total > 0 else cold_s


def shadow_spend_s(counts: FloatArray, spec: ScalingSpec, keepalive_s: float = SHADOW_KEEPALIVE_S) -> float:
    """Idle GPU-seconds a fixed `keepalive_s` spends on gaps binned as `counts` (any shape, last axis bins).

    A gap shorter than the window is held through (its bin's middle); a longer one costs the window
    and a reload.
    """
    per_gap = np.where(keepalive_s >= MIDS_S, MIDS_S, keepalive_s + spec.reload_idle_s)
    return float((np.asarray(counts, dtype=np.float64).reshape(-1, NBINS) * per_gap).sum())


def spend_curve_s(
    hist: GapHistory | None, spec: ScalingSpec, rates: FloatArray = RATE_GRID, counts: FloatArray | None = None
) -> FloatArray:
    """Idle GPU-seconds the windows priced at each of `rates` spend on gaps binned as `counts`.

    `counts` (`BUCKETS` x `NBINS`) defaults to the model's own shrunk distribution, i.e. its expected
    spending over its history; a runner passes the gaps of a recent period to price those instead.
    """
    c, w = _tables(hist, spec.expected_cold_start_s)
    windows = _windows(c, w, spec, np.asarray(rates, dtype=np.float64))
    x = c if counts is None else np.asarray(counts, dtype=np.float64).reshape(BUCKETS, NBINS)
    return _spend(x, windows, spec)


def rate_for_budget(spend_s: FloatArray, budget_s: float, rates: FloatArray = RATE_GRID) -> float:
    """The largest of `rates` whose expected spending `spend_s` stays within `budget_s`; the lowest if none."""
    ok = np.flatnonzero(np.asarray(spend_s) <= budget_s * (1.0 + 1e-9))
    return float(rates[int(ok[-1])]) if ok.size else float(rates[0])


def budget_rate(hist: GapHistory | None, spec: ScalingSpec, margin: float = DEFAULT_MARGIN) -> float:
    """The exchange rate that spends `margin` x what a 10-minute keep-alive would on this model's gaps.

    Both spendings are expected values over the model's own (shrunk) gap distribution, so the rate is
    a pure function of its history: the default budget needs no site-wide bookkeeping, and a model
    never plans to hold more idle than the fixed keep-alive it replaces. Memoised like `_priced`.
    """
    key = (id(hist), id(spec), -margin)
    hit = _RATE_CACHE.get(key)
    if hit is not None and hit[0] is hist and hit[1] is spec:
        return hit[2]
    if len(_RATE_CACHE) >= _CACHE_MAX:
        _RATE_CACHE.clear()
    c, _w = _tables(hist, spec.expected_cold_start_s)
    rate = rate_for_budget(spend_curve_s(hist, spec), margin * shadow_spend_s(c, spec))
    _RATE_CACHE[key] = (hist, spec, rate)
    return rate


def budget_terms(hist: GapHistory | None, spec: ScalingSpec) -> tuple[FloatArray, float]:
    """One model's share of a site budget: what its recorded gaps cost at each rate of `SITE_RATES`, and
    what a 10-minute keep-alive would have spent on them. No gap recorded: nothing either way."""
    if hist is None:
        return np.zeros(SITE_RATES.size), 0.0
    key = (id(hist), id(spec), 0.0)
    hit = _TERMS_CACHE.get(key)
    if hit is not None and hit[0] is hist and hit[1] is spec:
        return hit[2]
    if len(_TERMS_CACHE) >= _CACHE_MAX:
        _TERMS_CACHE.clear()
    counts = np.asarray(hist.counts, dtype=np.float64)
    out = (spend_curve_s(hist, spec, SITE_RATES, counts=counts), shadow_spend_s(counts, spec))
    _TERMS_CACHE[key] = (hist, spec, out)
    return out


def site_rate(models: Iterable[tuple[GapHistory | None, ScalingSpec]], share: float = DEFAULT_BUDGET_SHARE) -> float:
    """The one exchange rate of a site whose idle budget is `share` x a 10-minute keep-alive's spending.

    The largest rate at which every model's recorded gaps, held as the windows priced at that rate
    hold them, would have cost at most `share` x what a fixed 10-minute keep-alive spent on the same
    gaps (`budget_terms`, summed). A pure function of the models' histories: a site with busy models
    whose bursts are worth holding for lets them spend more than ten minutes, and sparse models less.
    """
    curve = np.zeros(SITE_RATES.size)
    shadow_s = 0.0
    for hist, spec in models:
        c, s = budget_terms(hist, spec)
        curve += c
        shadow_s += s
    return rate_for_budget(curve, share * shadow_s, SITE_RATES)


_Priced = tuple[tuple[float, ...], float, float]
_TERMS_CACHE: dict[tuple[int, int, float], tuple[GapHistory | None, ScalingSpec, tuple[FloatArray, float]]] = {}
_CACHE: dict[tuple[int, int, float], tuple[GapHistory | None, ScalingSpec, _Priced]] = {}
_RATE_CACHE: dict[tuple[int, int, float], tuple[GapHistory | None, ScalingSpec, float]] = {}
_CACHE_MAX = 4096


def _priced(hist: GapHistory | None, spec: ScalingSpec, rate: float) -> _Priced:
    """Every bucket's window at `rate`, the wait per cold start, and the model's gap count.

    Memoised on the objects' identity (they are immutable, and hashing 888 floats per decision cost
    more than the decision): a runner asks many times between two changes of a model's history.
    """
    key = (id(hist), id(spec), rate)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is hist and hit[1] is spec:
        return hit[2]
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    out = _compute_priced(hist, spec, rate)
    _CACHE[key] = (hist, spec, out)
    return out


def _tables(hist: GapHistory | None, cold_s: float) -> tuple[FloatArray, FloatArray]:
    """`effective` for every bucket at once: shrunk gap counts and waits, `BUCKETS` x `NBINS`."""
    model_c, model_w, _n = effective(hist, None, cold_s)
    if hist is None:
        return np.tile(model_c, (BUCKETS, 1)), np.tile(model_w, (BUCKETS, 1))
    c = np.asarray(hist.counts, dtype=np.float64).reshape(BUCKETS, NBINS)
    w = np.asarray(hist.waits_s, dtype=np.float64).reshape(BUCKETS, NBINS)
    scale = BUCKET_PSEUDO / float(model_c.sum())
    return c + scale * model_c, w + scale * model_w


def _windows(c: FloatArray, w: FloatArray, spec: ScalingSpec, rates: FloatArray) -> FloatArray:
    """Each bucket's window at each rate (`BUCKETS` x rates), from shrunk counts `c` and waits `w`.

    Candidate K = EDGES_S[j]: gaps in bins below j are held through, the others cost K, a reload and
    the wait at the exchange rate; the K of least expected cost, within the model's own bounds.
    """
    zero = np.zeros((c.shape[0], 1))
    held = np.concatenate((zero, np.cumsum(c * MIDS_S, axis=1)), axis=1)[:, :NBINS]
    beyond_n = c.sum(axis=1, keepdims=True) - np.concatenate((zero, np.cumsum(c, axis=1)), axis=1)[:, :NBINS]
    beyond_w = w.sum(axis=1, keepdims=True) - np.concatenate((zero, np.cumsum(w, axis=1)), axis=1)[:, :NBINS]
    base = held + beyond_n * (EDGES_S + spec.reload_idle_s)
    cost = base[:, :, None] + rates[None, None, :] * beyond_w[:, :, None]
    allowed = spec.max_keepalive_s + 1e-9 >= EDGES_S
    if not allowed.any():
        return np.full((c.shape[0], rates.size), spec.max_keepalive_s)
    cost[:, ~allowed, :] = np.inf
    best: FloatArray = EDGES_S[np.argmin(cost, axis=1)]
    # An operator's explicit bounds on the model win over the price.
    return np.minimum(np.maximum(best, spec.min_keepalive_s), spec.max_keepalive_s)


def _spend(counts: FloatArray, windows: FloatArray, spec: ScalingSpec) -> FloatArray:
    """Idle GPU-seconds `counts` (`BUCKETS` x `NBINS`) cost under `windows` (`BUCKETS` x rates), per rate."""
    k = windows[:, None, :]
    per_gap = np.where(MIDS_S[None, :, None] <= k, MIDS_S[None, :, None], k + spec.reload_idle_s)
    spend: FloatArray = np.einsum("bj,bjr->r", counts, per_gap)
    return spend


def _compute_priced(hist: GapHistory | None, spec: ScalingSpec, rate: float) -> _Priced:
    cold_s = spec.expected_cold_start_s
    model_c, model_w, n_model = effective(hist, None, cold_s)
    c, w = _tables(hist, cold_s)
    windows = _windows(c, w, spec, np.asarray([rate], dtype=np.float64))[:, 0]
    total = float(model_c.sum())
    wait_s = float(model_w.sum()) / total if total > 0 else cold_s
    return tuple(float(k) for k in windows), wait_s, n_model


def prewarm_threshold(hist: GapHistory | None, spec: ScalingSpec, rate: float, slot_s: float) -> float:
    """The chance of demand in a forecast slot above which warming it pays, at `rate`.

    Warming costs the slot's idle when nobody comes plus the reload; it saves `rate` x the wait a cold
    start would cause: p * value >= (1 - p) * slot + reload  <=>  p >= (slot + reload) / (slot + value).
    """
    value_s = rate * _priced(hist, spec, rate)[1]
    return min(1.0 + 1e-9, (slot_s + spec.reload_idle_s) / (slot_s + value_s)) if value_s > 0 else math.inf
