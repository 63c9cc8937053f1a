"""The GPU budget: the replica whose release costs least waiting per GPU gives way; promises and waiting
models come first."""

from __future__ import annotations

import pytest

from policies.budget import BudgetRequest, fit_budget


def test_fits_when_budget_allows() -> None:
    out = fit_budget([BudgetRequest("a", 2), BudgetRequest("b", 1)], 8)
    assert out == {"a": (2, []), "b": (1, [])}


@pytest.mark.parametrize(
    ("budget", "granted"),
    [
        (6, {"dear": 1, "cheap": 1, "big": 1}),
        (5, {"dear": 1, "cheap": 0, "big": 1}),  # big: 400 user-s over 4 GPUs = 100 per GPU > cheap's 5
        (4, {"dear": 1, "cheap": 1, "big": 0}),  # the big one does not fit in what is left
        (1, {"dear": 1, "cheap": 0, "big": 0}),
        (0, {"dear": 0, "cheap": 0, "big": 0}),
    ],
)
def test_cheapest_release_per_gpu_gives_way_first(budget: int, granted: dict[str, int]) -> None:
    reqs = [
        BudgetRequest("cheap", 1, release_wait_s=(5.0,)),
        BudgetRequest("dear", 1, release_wait_s=(300.0,)),
        BudgetRequest("big", 1, gpus_per_replica=4, release_wait_s=(400.0,)),
    ]
    out = fit_budget(reqs, budget)
    assert {m: got for m, (got, _) in out.items()} == granted
    for model, (got, reasons) in out.items():
        assert (got < 1) == bool(reasons) and all(r.policy == "budget" for r in reasons), model


def test_promises_and_waiting_come_before_any_price() -> None:
    reqs = [
        BudgetRequest("popular", 3, release_wait_s=(9e9, 9e9, 9e9)),
        BudgetRequest("woken", 1, waiting=1),
        BudgetRequest("scheduled", 1, promised=1),
    ]
    out = fit_budget(reqs, 3)
    assert {m: got for m, (got, _) in out.items()} == {"popular": 1, "woken": 1, "scheduled": 1}
    assert "user-s of waiting per GPU" in out["popular"][1][0].detail


def test_replicas_are_granted_in_rank_order() -> None:
    """A second replica dearer than another model's first cannot be granted without its first."""
    reqs = [BudgetRequest("a", 2, release_wait_s=(1.0, 50.0)), BudgetRequest("b", 1, release_wait_s=(10.0,))]
    assert {m: got for m, (got, _) in fit_budget(reqs, 2).items()} == {"a": 1, "b": 1}


def test_price_per_gpu() -> None:
    req = BudgetRequest("m", 2, gpus_per_replica=2, release_wait_s=(100.0,))
    assert (req.wait_per_gpu_s(1), req.wait_per_gpu_s(2)) == (50.0, 0.0)
