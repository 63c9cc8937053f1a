"""Fit every model's desired replicas into the cluster-wide GPU budget.

When the budget is full, the replica with the least expected value gives way, in the spirit of
FaaSCache's Greedy-Dual: value = request frequency x cold-start cost / GPUs (what keeping it saves,
per GPU it holds), divided by the replica's rank so scale-out replicas yield before a model's first.
Configured minimums come first, then the first replica of any model with requests waiting (a
registered cold model must be able to wake), then everything else by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.types import Reason


@dataclass(frozen=True)
class BudgetRequest:
    """One model's ask: its desired replicas and what they are worth."""

    model: str
    desired: int
    gpus_per_replica: int = 1
    min_replicas: int = 0
    waiting: int = 0
    rate_per_s: float = 0.0
    cold_start_s: float = 150.0


def greedy_dual_value(rate_per_s: float, cold_start_s: float, gpus: int) -> float:
    """Expected value of keeping one replica: frequency x cold-start cost / GPUs."""
    return rate_per_s * cold_start_s / max(gpus, 1)


def fit_budget(requests: Sequence[BudgetRequest], budget_gpus: int) -> dict[str, tuple[int, list[Reason]]]:
    """Granted replicas per model, each with the reasons for any cut."""
    units: list[tuple[int, float, str, int]] = []
    for req in requests:
        value = greedy_dual_value(req.rate_per_s, req.cold_start_s, req.gpus_per_replica)
        for rank in range(1, req.desired + 1):
            if rank <= req.min_replicas:
                tier = 0
            elif rank == 1 and req.waiting > 0:
                tier = 1
            else:
                tier = 2
            units.append((tier, -value / rank, req.model, rank))
    units.sort()
    by_model = {r.model: r for r in requests}
    granted = {r.model: 0 for r in requests}
    free = budget_gpus
    for _tier, _neg_value, model, rank in units:
        gpus = by_model[model].gpus_per_replica
        # A model's replicas are granted in rank order: a gap would leave a higher rank stranded.
        if rank == granted[model] + 1 and gpus <= free:
            granted[model] = rank
            free -= gpus
    out: dict[str, tuple[int, list[Reason]]] = {}
    for req in requests:
        reasons: list[Reason] = []
        got = granted[req.model]
        if got < req.desired:
            value = greedy_dual_value(req.rate_per_s, req.cold_start_s, req.gpus_per_replica)
            reasons.append(
                Reason(
                    "budget",
                    got,
                    f"GPU budget {budget_gpus} full: {req.desired - got} replica(s) gave way (value {value:.3g})",
                )
            )
        out[req.model] = (got, reasons)
    return out
