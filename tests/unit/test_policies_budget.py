"""The GPU budget: least expected value gives way; minimums and waiting models come first."""

from __future__ import annotations

from policies.budget import BudgetRequest, fit_budget, greedy_dual_value


def test_fits_when_budget_allows() -> None:
    out = fit_budget([BudgetRequest("a", 2), BudgetRequest("b", 1)], 8)
    assert out == {"a": (2, []), "b": (1, [])}


def test_least_value_gives_way() -> None:
    reqs = [
        BudgetRequest("hot", 1, rate_per_s=2.0, cold_start_s=150.0),
        BudgetRequest("cold", 1, rate_per_s=0.01, cold_start_s=150.0),
        BudgetRequest("big", 1, gpus_per_replica=4, rate_per_s=2.0, cold_start_s=150.0),
    ]
    out = fit_budget(reqs, 5)
    assert out["hot"][0] == 1
    assert out["big"][0] == 1  # value per GPU 75 beats the cold model's 1.5
    assert out["cold"][0] == 0
    assert out["cold"][1][0].policy == "budget"


def test_waiting_and_minimum_come_first() -> None:
    reqs = [
        BudgetRequest("popular", 3, rate_per_s=100.0),
        BudgetRequest("woken", 1, waiting=1, rate_per_s=0.0),
        BudgetRequest("pinned", 1, min_replicas=1),
    ]
    out = fit_budget(reqs, 3)
    assert out["pinned"][0] == 1
    assert out["woken"][0] == 1
    assert out["popular"][0] == 1


def test_value_formula() -> None:
    assert greedy_dual_value(2.0, 100.0, 2) == 100.0
