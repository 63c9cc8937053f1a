"""When a starting model will answer: an estimate that stays honest when a start runs long.

A phase's remaining time is estimated from the model's past durations of that phase, given how long
this one has lasted already: the p95 of the past durations longer than the elapsed time, minus the
elapsed time. As a start runs past the short samples, only the long ones are left to describe it, so
the estimate grows instead of sitting at zero; once it has outlasted every past duration (an engine
that is slower than anything learnt, say a real vLLM after a simulator) the honest answer is
"unknown" (None). Pure functions of (samples, elapsed); the launcher passes the time in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _p95(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def remaining_s(samples_s: Sequence[float], elapsed_s: float, *, default_s: float) -> float | None:
    """Seconds left of a phase that began `elapsed_s` ago; None when nothing learnt covers it.

    Without samples, `default_s` stands for the single past duration.
    """
    elapsed_s = max(0.0, elapsed_s)
    longer = [s for s in (samples_s or [default_s]) if s > elapsed_s]
    if not longer:
        return None
    return _p95(longer) - elapsed_s


def ready_eta_s(
    *,
    now_s: float,
    load_samples_s: Sequence[float],
    default_load_s: float,
    loading_since_s: float | None = None,
    queue_samples_s: Sequence[float] = (),
    default_queue_s: float = 0.0,
    queued_since_s: float | None = None,
    est_start_s: float | None = None,
) -> float | None:
    """When (epoch s) the model answers, or None when it is not known.

    A model past Slurm's queue gives `loading_since_s` (when its job started or its engine
    registered). A model still queued gives `queued_since_s`, and Slurm's own `est_start_s` when
    it has one (trusted while it lies ahead); the load estimate is then the whole of it.
    """
    if loading_since_s is not None:
        left = remaining_s(load_samples_s, now_s - loading_since_s, default_s=default_load_s)
        return None if left is None else now_s + left
    load = remaining_s(load_samples_s, 0.0, default_s=default_load_s) or 0.0
    if est_start_s is not None and est_start_s > now_s:
        return est_start_s + load
    if est_start_s is not None or queued_since_s is None:
        return now_s + load
    queue = remaining_s(queue_samples_s, now_s - queued_since_s, default_s=default_queue_s)
    return None if queue is None else now_s + queue + load
