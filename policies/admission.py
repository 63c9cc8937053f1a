"""Admission for the gateway: take a request into a model's queue, or refuse it and say when to retry.

Rules (docs/architecture.md, "A request's path"): a full queue while the model is warm is 429 (the client is too fast);
a full queue or a wait past the budget while it is cold is 503 with Retry-After near the expected
readiness (the service is not there yet); a full global queue is 503 (slurmless is overloaded).
Two budgets: `cold_budget_s` while no instance is ready (covers Slurm queue wait and loading),
`warm_budget_s` while instances run but are full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    ADMIT = "admit"
    TOO_MANY = "reject_429"
    UNAVAILABLE = "reject_503"


@dataclass(frozen=True)
class AdmissionInput:
    """What the gateway knows when a request arrives or when a queued one is re-checked."""

    queue_depth: int
    global_depth: int
    max_queue_depth: int
    max_global_depth: int
    warm: bool
    waited_s: float = 0.0
    cold_budget_s: float = 600.0
    warm_budget_s: float = 30.0
    eta_s: float | None = None


@dataclass(frozen=True)
class AdmissionDecision:
    verdict: Verdict
    retry_after_s: int | None
    reason: str

    @property
    def status_code(self) -> int:
        return {Verdict.ADMIT: 200, Verdict.TOO_MANY: 429, Verdict.UNAVAILABLE: 503}[self.verdict]


def _retry(eta_s: float | None, fallback_s: float) -> int:
    return max(1, math.ceil(eta_s if eta_s is not None and eta_s > 0 else fallback_s))


def admit(inp: AdmissionInput) -> AdmissionDecision:
    """Decide for a new request (`waited_s` = 0) or a queued one being re-checked."""
    if inp.waited_s == 0.0 and inp.global_depth >= inp.max_global_depth:
        return AdmissionDecision(Verdict.UNAVAILABLE, _retry(None, 5.0), "all queues full")
    if inp.waited_s == 0.0 and inp.queue_depth >= inp.max_queue_depth:
        if inp.warm:
            return AdmissionDecision(Verdict.TOO_MANY, _retry(None, 1.0), "model queue full")
        return AdmissionDecision(Verdict.UNAVAILABLE, _retry(inp.eta_s, 30.0), "model queue full while it starts")
    budget_s = inp.warm_budget_s if inp.warm else inp.cold_budget_s
    if inp.waited_s > budget_s:
        phase = "warm" if inp.warm else "cold"
        return AdmissionDecision(
            Verdict.UNAVAILABLE,
            _retry(inp.eta_s, 5.0 if inp.warm else 30.0),
            f"waited {inp.waited_s:.0f}s past the {phase} budget {budget_s:.0f}s",
        )
    return AdmissionDecision(Verdict.ADMIT, None, "queued" if inp.waited_s == 0.0 else "still within budget")
