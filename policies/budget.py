"""Fit every model's desired replicas into the cluster-wide GPU budget, priced in the warm pool's currency.

When the budget is full, the replica whose release causes the least expected waiting per GPU it frees
gives way first (`policies.eviction` prices it: user-seconds of waiting, from the model's learnt gaps at
its exchange rate). Promises come first whatever their price (`min_replicas`, a warm request, a
schedule's window), then the first replica of any model with requests waiting (a registered cold model
must be able to wake), then everything else, dearest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from policies.types import Reason


@dataclass(frozen=True)
class BudgetRequest:
    """One model's ask: its desired replicas and what releasing each would cost."""

    model: str
    desired: int
    gpus_per_replica: int = 1
    promised: int = 0
    """Replicas promised (min_replicas, warm request, schedule): granted before any priced one."""
    waiting: int = 0
    release_wait_s: tuple[float, ...] = ()
    """Per replica (first to last), the expected user-seconds of waiting its release causes; missing: 0."""

    def wait_per_gpu_s(self, rank: int) -> float:
        """The price of replica `rank` (1-based): its release's expected waiting per GPU it frees."""
        wait_s = self.release_wait_s[rank - 1] if rank <= len(self.release_wait_s) else 0.0
        return wait_s / max(self.gpus_per_replica, 1)


def fit_budget(requests: Sequence[BudgetRequest], budget_gpus: int) -> dict[str, tuple[int, list[Reason]]]:
    """Granted replicas per model, each with the reasons for any cut."""
    units: list[tuple[int, float, str, int]] = []
    for req in requests:
        for rank in range(1, req.desired + 1):
            if rank <= req.promised:
                tier = 0
            elif rank == 1 and req.waiting > 0:
                tier = 1
            else:
                tier = 2
            units.append((tier, -req.wait_per_gpu_s(rank), req.model, rank))
    units.sort()
    by_model = {r.model: r for r in requests}
    granted = {r.model: 0 for r in requests}
    free = budget_gpus
    for _tier, _neg_price, model, rank in units:
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
            price = req.wait_per_gpu_s(got + 1)
            reasons.append(
                Reason(
                    "budget",
                    got,
                    f"GPU budget {budget_gpus} full: {req.desired - got} replica(s) gave way "
                    f"(releasing costs {price:.3g} user-s of waiting per GPU)",
                )
            )
        out[req.model] = (got, reasons)
    return out
