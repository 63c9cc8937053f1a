"""Several clusters behind one gateway: which cluster's launcher submits a model's next instance.

Every cluster has its own launcher (a leader plus standbys) and all of them share one Redis. Each
leader publishes its cluster's status from its ticks (`ClusterStatus`: alive, Slurm answering) and, when
a model needs another instance, its `sbatch --test-only` start estimate for it (`ClusterEstimate`).
`choose_cluster` is the pure decision every launcher takes over the same facts: the cluster whose job
would start first among those that may run the model, are alive and whose Slurm answers; a tie (starts
within `TIE_S` of each other) goes to the cluster whose name sorts first. A launcher whose cluster is
not chosen submits nothing; the chosen one takes a short per-model claim (`warmpool.clusters`) while it
writes the instance, so that two clusters that briefly saw different facts still submit once.

A cluster whose controller is down stops publishing a good status (its squeue or an estimate fails), so the others
stop waiting for it at once; a cluster whose launcher died stops being alive after `alive_s`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from warmpool.clusters import ClusterEstimate, ClusterStatus

TIE_S = 5.0
"""Start estimates this close count as equal (sbatch prints whole seconds, and two clusters estimate a
moment apart): the tie goes to the first cluster by name, so every launcher picks the same one."""


class Verdict(StrEnum):
    SUBMIT = "submit"
    """This cluster's launcher submits."""
    ELSEWHERE = "elsewhere"
    """Another cluster submits (or only other clusters may run the model)."""
    WAIT = "wait"
    """Another live cluster has not estimated yet: decide again in a moment (the next tick)."""
    NOWHERE = "nowhere"
    """No allowed cluster can start the model now."""


@dataclass(frozen=True, slots=True)
class ClusterChoice:
    """The decision and why; `cluster` is the chosen one (None when waiting or nowhere)."""

    verdict: Verdict
    cluster: str | None
    reason: str


def allowed_here(allowed: Collection[str], cluster: str) -> bool:
    """Whether a model restricted to `allowed` clusters (empty: any) may run on `cluster`."""
    return not allowed or cluster in allowed


def live_clusters(statuses: Mapping[str, ClusterStatus], now_s: float, alive_s: float) -> dict[str, ClusterStatus]:
    """The clusters whose leader reported within `alive_s` and whose Slurm answered then."""
    return {c: s for c, s in statuses.items() if now_s - s.seen_s <= alive_s and s.slurm_ok}


def rivals(
    me: str, allowed: Collection[str], statuses: Mapping[str, ClusterStatus], now_s: float, alive_s: float
) -> list[str]:
    """The other clusters that could take a model's next instance now: none means this one decides alone,
    as a single-cluster deployment does (no estimate, no claim)."""
    return sorted(c for c in live_clusters(statuses, now_s, alive_s) if c != me and allowed_here(allowed, c))


def choose_cluster(
    me: str,
    allowed: Collection[str],
    statuses: Mapping[str, ClusterStatus],
    estimates: Mapping[str, ClusterEstimate],
    now_s: float,
    *,
    alive_s: float,
    fresh_s: float,
    wait_s: float,
) -> ClusterChoice:
    """Which cluster's launcher submits a model's next instance, decided by launcher `me`.

    Candidates are the allowed clusters that are live (`live_clusters`) plus `me` when allowed (its own
    estimate says whether its Slurm can start the job). Estimates older than `fresh_s` are ignored. While a
    live candidate has no fresh estimate and the oldest fresh one is younger than `wait_s`, the answer is
    WAIT; after that the decision is taken among the estimates there are.
    """
    if not allowed_here(allowed, me):
        return ClusterChoice(Verdict.ELSEWHERE, None, f"the model may not run on cluster {me}")
    candidates = {*rivals(me, allowed, statuses, now_s, alive_s), me}
    fresh = {c: e for c, e in estimates.items() if c in candidates and 0 <= now_s - e.at_s <= fresh_s}
    missing = sorted(candidates - fresh.keys())
    if missing and fresh and now_s - min(e.at_s for e in fresh.values()) < wait_s:
        return ClusterChoice(Verdict.WAIT, None, f"waiting for the start estimate of {', '.join(missing)}")
    starts = {c: max(e.est_start_s, e.at_s) for c, e in fresh.items() if e.est_start_s is not None}
    if not starts:
        details = "; ".join(f"{c}: {e.detail or 'cannot start'}" for c, e in sorted(fresh.items()))
        return ClusterChoice(Verdict.NOWHERE, None, f"no cluster can start it ({details or 'no estimate'})")
    soonest = min(starts.values())
    best = min(c for c, start in starts.items() if start - soonest <= TIE_S)
    summary = ", ".join(f"{c} in {max(0.0, s - now_s):.0f}s" for c, s in sorted(starts.items()))
    if best == me:
        return ClusterChoice(Verdict.SUBMIT, me, f"earliest start on {me} ({summary})")
    return ClusterChoice(Verdict.ELSEWHERE, best, f"earliest start on {best} ({summary})")


__all__ = [
    "TIE_S",
    "ClusterChoice",
    "ClusterEstimate",
    "ClusterStatus",
    "Verdict",
    "allowed_here",
    "choose_cluster",
    "live_clusters",
    "rivals",
]
