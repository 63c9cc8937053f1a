"""Idle-to-zero: a per-model keep-alive learnt from the model's idle-time histogram.

After Shahrad et al., "Serverless in the Wild" (ATC'20): keep a histogram of the idle times between a
model's requests (1-minute bins, 4 hours) and choose the keep-alive window from it. Their tail
percentile suits cheap containers; a GPU replica idles at a real price, so the window here is the
ski-rental optimum on the empirical distribution instead: the K that minimises

    sum over idle gaps g of  min(g, K)  +  value * [g > K]

i.e. the idle GPU-seconds spent waiting plus `cold_start_value_s` for every gap that ends in a cold
start. A fixed 10-minute keep-alive is this rule's deterministic break-even for a value of 600 s, so
the same exchange rate makes the learnt window never worse in total cost on the history it saw.
The window is never shorter than `keepalive_floor_s` (proportional to the cold-start cost) and never
longer than `max_keepalive_s`; with fewer than `MIN_SAMPLES` idle times the default applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from policies.types import IdleHistogram, LoadSnapshot, PolicyMix, ScalingSpec

MIN_SAMPLES = 8

# Idle gaps shorter than this are requests of one burst, not idleness worth a decision; counting
# them would only dilute the histogram of a busy model.
MIN_IDLE_GAP_S = 1.0


def learnt_keepalive_s(hist: IdleHistogram, spec: ScalingSpec) -> float | None:
    """The cost-optimal keep-alive on `hist`, clamped to the spec's floor and ceiling."""
    total = hist.total
    if total < MIN_SAMPLES:
        return None
    counts = np.asarray(hist.counts, dtype=np.float64)
    hits = np.asarray(hist.hits, dtype=np.float64)
    nbins = counts.size
    mids_s = (np.arange(nbins) + 0.5) * hist.bin_s
    event_value_s = spec.cold_start_value_s if spec.keepalive_event_value_s is None else spec.keepalive_event_value_s
    # Candidate K = k * bin_s for k = 0..nbins: gaps in bins below k are waited through in full,
    # gaps from bin k on (and the overflow) cost K of idling and then a cold start, priced per
    # event plus per request it delays.
    below_n = np.concatenate(([0.0], np.cumsum(counts)))
    below_hits = np.concatenate(([0.0], np.cumsum(hits)))
    total_hits = float(hits.sum()) + hist.overflow_hits
    below_idle_s = np.concatenate(([0.0], np.cumsum(counts * mids_s)))
    k_s = np.arange(nbins + 1) * hist.bin_s
    cost = (
        below_idle_s + (total - below_n) * (k_s + event_value_s) + (total_hits - below_hits) * spec.cold_request_value_s
    )
    allowed = (k_s >= spec.keepalive_floor_s - 1e-9) & (k_s <= spec.max_keepalive_s + 1e-9)
    if not allowed.any():
        return spec.keepalive_floor_s
    cost = np.where(allowed, cost, np.inf)
    best = int(np.argmin(cost))
    if best == int(np.argmax(allowed)):
        # Nothing beyond the floor pays off; the floor itself (not the next bin edge) is the answer.
        return spec.keepalive_floor_s
    return min(max(float(k_s[best]), spec.keepalive_floor_s), spec.max_keepalive_s)


def percentile_keepalive_s(hist: IdleHistogram, spec: ScalingSpec, percentile: float) -> float:
    """Shahrad et al.'s window: the `percentile` of the idle gaps seen, within floor and ceiling.

    With fewer than `MIN_SAMPLES` gaps the default applies; gaps beyond the histogram's range count
    as its end.
    """
    total = hist.total
    if total < MIN_SAMPLES:
        return max(spec.default_keepalive_s, spec.keepalive_floor_s)
    cum = np.cumsum(np.asarray(hist.counts, dtype=np.float64))
    k = int(np.searchsorted(cum, percentile / 100.0 * total, side="left"))
    window_s = (k + 1) * hist.bin_s
    return min(max(window_s, spec.keepalive_floor_s), spec.max_keepalive_s)


def observe_idle(
    hist: IdleHistogram,
    gaps_s: Iterable[float],
    spec: ScalingSpec,
    hits: Iterable[float] | None = None,
) -> IdleHistogram:
    """Add idle gaps (seconds between one request's end and the next one's arrival); pure.

    `hits`, parallel to `gaps_s`, counts the requests arriving within one expected cold start after
    each gap (1 each when not given).
    """
    gaps_all = np.asarray(list(gaps_s), dtype=np.float64)
    hits_all = np.ones_like(gaps_all) if hits is None else np.asarray(list(hits), dtype=np.float64)
    keep = np.isfinite(gaps_all) & (gaps_all >= MIN_IDLE_GAP_S)
    gaps, gap_hits = gaps_all[keep], hits_all[keep]
    if gaps.size == 0:
        return hist
    nbins = len(hist.counts)
    idx = (gaps // hist.bin_s).astype(np.int64)
    inside = idx < nbins
    overflow = int((~inside).sum())
    add = np.bincount(idx[inside], minlength=nbins)
    add_hits = np.bincount(idx[inside], weights=gap_hits[inside], minlength=nbins)
    # `tolist` gives Python ints and floats, as the tuples hold, without a Python loop over the bins.
    counts = tuple((np.asarray(hist.counts, dtype=np.int64) + add).tolist())
    new_hits = tuple((np.asarray(hist.hits, dtype=np.float64) + add_hits).tolist())
    new = replace(
        hist,
        counts=counts,
        overflow=hist.overflow + overflow,
        hits=new_hits,
        overflow_hits=hist.overflow_hits + float(gap_hits[~inside].sum()),
    )
    return replace(new, keepalive_s=learnt_keepalive_s(new, spec))


def keepalive_for(hist: IdleHistogram, spec: ScalingSpec, mix: PolicyMix) -> float:
    """The keep-alive window in effect for this model under `mix`."""
    if mix.keepalive in ("fixed", "oracle"):
        return mix.fixed_keepalive_s
    if mix.keepalive == "avg":
        return mix.avg_window_s
    if mix.keepalive == "none":
        return spec.keepalive_floor_s
    if mix.keepalive_percentile is not None:
        return percentile_keepalive_s(hist, spec, mix.keepalive_percentile)
    learnt = hist.keepalive_s
    if learnt is None:
        return max(spec.default_keepalive_s, spec.keepalive_floor_s)
    return learnt


def keep_warm(
    load: LoadSnapshot, keepalive_s: float, now_s: float, *, label: str = "keepalive"
) -> tuple[int, str, float]:
    """Whether idle-to-zero keeps the held replicas: (replicas, reason, recheck_at_s).

    Never drains while requests wait or run; otherwise keeps what is held until `keepalive_s` after the
    last activity. A replica that never served (pre-warmed) is not kept by this policy.
    """
    held = load.held_replicas
    if held == 0:
        return 0, "nothing held", float("inf")
    if load.queue_depth > 0 or load.in_flight > 0:
        # Keep one; how many more the load needs is the reactive policy's business.
        return 1, f"{load.queue_depth} waiting, {load.in_flight:g} in flight: never drain", float("inf")
    if load.last_activity_s is None:
        return 0, "held but never used", float("inf")
    idle_s = now_s - load.last_activity_s
    if idle_s < keepalive_s:
        deadline_s = load.last_activity_s + keepalive_s
        return (
            1,
            f"idle {idle_s:.0f}s < {label} {keepalive_s:.0f}s",
            deadline_s,
        )
    return 0, f"idle {idle_s:.0f}s >= {label} {keepalive_s:.0f}s: scale to zero", float("inf")
