"""The wait budgets and Retry-After on a synthetic timeline."""

from __future__ import annotations

from queue_gateway.budget import COLD_RETRY_AFTER_S, WARM_RETRY_AFTER_S, Budgets, retry_after_s, wait_deadline_s

T0 = 1_000_000.0
B = Budgets(cold_s=600.0, warm_s=30.0)


def test_cold_budget_counts_from_enqueue_while_no_instance_is_ready() -> None:
    assert wait_deadline_s(T0, B, None) == T0 + 600


def test_warm_at_admission_gets_the_warm_budget() -> None:
    assert wait_deadline_s(T0, B, T0) == T0 + 30
    # Readiness seen before the request arrived counts from the arrival.
    assert wait_deadline_s(T0, B, T0 - 500) == T0 + 30


def test_switch_to_warm_counts_from_readiness() -> None:
    ready_at = T0 + 400  # cold start took 400 s
    assert wait_deadline_s(T0, B, ready_at) == T0 + 430
    # Readiness near the end of the cold budget still leaves the full warm budget.
    assert wait_deadline_s(T0, B, T0 + 590) == T0 + 620


def test_a_timeline_of_one_request() -> None:
    """Walk a request through cold, then warm-but-full, and check when it would give up."""
    now = T0
    warm_since: float | None = None
    timeline = [(T0 + 10, False), (T0 + 300, False), (T0 + 320, True), (T0 + 349, True), (T0 + 351, True)]
    verdicts = []
    for now, ready in timeline:
        if ready and warm_since is None:
            warm_since = now
        verdicts.append(now >= wait_deadline_s(T0, B, warm_since))
    assert verdicts == [False, False, False, False, True]


def test_retry_after() -> None:
    assert retry_after_s(now_s=T0, warm=True, eta_s=T0 + 500) == WARM_RETRY_AFTER_S
    assert retry_after_s(now_s=T0, warm=False, eta_s=T0 + 74) == 74
    assert retry_after_s(now_s=T0, warm=False, eta_s=T0 - 5) == COLD_RETRY_AFTER_S
    assert retry_after_s(now_s=T0, warm=False, eta_s=None) == COLD_RETRY_AFTER_S
