"""Gateway admission: 429 when warm and full, 503 with Retry-After when cold, overloaded or too late."""

from __future__ import annotations

from policies.admission import AdmissionInput, Verdict, admit

BASE = AdmissionInput(queue_depth=0, global_depth=0, max_queue_depth=10, max_global_depth=100, warm=True)


def test_admits_within_limits() -> None:
    d = admit(BASE)
    assert d.verdict is Verdict.ADMIT
    assert d.status_code == 200


def test_full_queue_warm_is_429_cold_is_503() -> None:
    full = AdmissionInput(queue_depth=10, global_depth=10, max_queue_depth=10, max_global_depth=100, warm=True)
    assert admit(full).verdict is Verdict.TOO_MANY
    cold = AdmissionInput(
        queue_depth=10, global_depth=10, max_queue_depth=10, max_global_depth=100, warm=False, eta_s=95.2
    )
    d = admit(cold)
    assert d.status_code == 503
    assert d.retry_after_s == 96


def test_global_overload_is_503() -> None:
    d = admit(AdmissionInput(queue_depth=0, global_depth=100, max_queue_depth=10, max_global_depth=100, warm=True))
    assert d.verdict is Verdict.UNAVAILABLE


def test_wait_budgets_differ_warm_and_cold() -> None:
    warm_late = AdmissionInput(
        queue_depth=3, global_depth=3, max_queue_depth=10, max_global_depth=100, warm=True, waited_s=31.0
    )
    assert admit(warm_late).verdict is Verdict.UNAVAILABLE
    cold_ok = AdmissionInput(
        queue_depth=3, global_depth=3, max_queue_depth=10, max_global_depth=100, warm=False, waited_s=300.0
    )
    assert admit(cold_ok).verdict is Verdict.ADMIT
    cold_late = AdmissionInput(
        queue_depth=3, global_depth=3, max_queue_depth=10, max_global_depth=100, warm=False, waited_s=601.0
    )
    d = admit(cold_late)
    assert d.verdict is Verdict.UNAVAILABLE
    assert d.retry_after_s is not None
    assert d.retry_after_s >= 1
