"""Request arrivals from a trace, generated the way ServeGen does, and their service times.

Per 600-second window: draw n = rate x 600 inter-arrival times from the window's fitted distribution
and rescale them so that they fill the window. All windows of a model are drawn at once (numpy,
no Python loop over requests).

Some clients send hundreds of requests per second (one m-mid client ~1.1 billion in 14 days). The warm
pool's decisions depend on idle gaps of minutes, not on sub-second spacing, so a window with more
than `cap` requests is represented by `cap` arrivals drawn the same way, each standing for n / cap
requests (its `weight`). Sub-sampling only lengthens gaps inside windows that are busy throughout,
where every policy is warm anyway; windows with up to `cap` requests are replayed request by request.

Service time: a request occupies its replica for prefill + decode, with token counts resampled from
the Azure LLM inference trace (2023, conversation): ContextTokens / 4,000 tok/s + GeneratedTokens /
30 tok/s (a 7-8B model on one GPU under batching), ~7 s on average; a missing file is an error.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tracesim.trace import DIST_GAMMA, DIST_WEIBULL, WINDOW_S, ModelTrace, TraceError

DEFAULT_CAP = 64
DEFAULT_SERVICE_S = 7.0
PREFILL_TOK_PER_S = 4000.0
DECODE_TOK_PER_S = 30.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Arrivals:
    """A model's arrivals: times (sorted), how many requests each stands for, service seconds each."""

    times_s: FloatArray
    weights: FloatArray
    service_s: FloatArray
    window_counts: FloatArray  # real requests per window (for forecasts and load)


def load_service_times(azure_csv: Path | None) -> FloatArray:
    """Service-time samples (seconds) from an Azure LLM trace CSV; None: one flat `DEFAULT_SERVICE_S`.

    A path that does not exist is an error, never a silent fallback: numbers would change unseen.
    """
    if azure_csv is None:
        return np.asarray([DEFAULT_SERVICE_S])
    if not azure_csv.is_file():
        raise TraceError(f"service-time trace {azure_csv} not found (the repo ships it under traces/)")
    ctx: list[float] = []
    gen: list[float] = []
    with azure_csv.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if len(row) >= 3:
                ctx.append(float(row[1]))
                gen.append(float(row[2]))
    return np.asarray(ctx) / PREFILL_TOK_PER_S + np.asarray(gen) / DECODE_TOK_PER_S


def window_counts(trace: ModelTrace) -> FloatArray:
    """Requests per window: rate x 600, rounded (as ServeGen's generator does)."""
    return np.rint(trace.rate_per_s * WINDOW_S)


def generate_arrivals(
    trace: ModelTrace,
    rng: np.random.Generator,
    service_samples: FloatArray,
    *,
    cap: int = DEFAULT_CAP,
) -> Arrivals:
    """Arrival times for every window of `trace`, vectorised."""
    counts = window_counts(trace)
    drawn = np.minimum(counts, cap).astype(np.int64)
    active = drawn > 0
    m = drawn[active]
    total = int(m.sum())
    if total == 0:
        empty = np.zeros(0)
        return Arrivals(empty, empty, empty, counts)
    shape = np.repeat(trace.shape[active], m)
    scale = np.repeat(trace.scale[active], m)
    kind = np.repeat(trace.dist[active], m)
    gaps = np.empty(total)
    g = kind == DIST_GAMMA
    wb = kind == DIST_WEIBULL
    other = ~(g | wb)
    # Tiny shapes make gamma/weibull draws underflow to 0 or overflow; the rescale below only
    # needs relative sizes, so clip to a sane positive range.
    gaps[g] = rng.gamma(np.maximum(shape[g], 1e-3), 1.0)
    gaps[wb] = rng.weibull(np.maximum(shape[wb], 0.05))
    gaps[other] = rng.exponential(1.0, int(other.sum()))
    gaps = np.clip(np.nan_to_num(gaps, nan=1.0, posinf=1e12), 1e-12, 1e12)
    del scale  # the scale cancels in the rescale to the window
    starts = np.concatenate(([0], np.cumsum(m)[:-1]))
    csum = np.cumsum(gaps)
    seg_base = np.repeat(csum[starts] - gaps[starts], m)
    seg_total = np.repeat(np.add.reduceat(gaps, starts), m)
    frac = (csum - seg_base) / seg_total
    # ServeGen rescales the n gaps to fill the window, so the last one lands on the window's end;
    # shift by half a gap to keep arrivals strictly inside their window.
    first_frac = np.repeat(gaps[starts] / np.add.reduceat(gaps, starts), m)
    frac = np.clip(frac - 0.5 * first_frac, 0.0, 1.0 - 1e-9)
    t0 = np.repeat(trace.ts_s[active], m)
    times = t0 + frac * WINDOW_S
    weights = np.repeat(counts[active] / m, m)
    order = np.argsort(times, kind="stable")
    times = times[order]
    weights = weights[order]
    service = rng.choice(service_samples, size=total)
    return Arrivals(times, weights, service, counts)
