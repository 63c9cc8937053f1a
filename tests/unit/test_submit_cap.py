"""The cap on failed submissions across models, walked along a synthetic timeline."""

from __future__ import annotations

from policies.submit_cap import may_submit, recent_failures


def test_failures_leave_the_window_after_window_s() -> None:
    assert recent_failures([100.0, 50.0, 10.0], 110.0, 61.0) == [50.0, 100.0]
    assert recent_failures([50.0], 110.0, 60.0) == []


def test_an_unproven_model_waits_while_the_window_is_full() -> None:
    failed = [0.0, 1.0, 2.0]
    assert not may_submit(failed, 3.0, window_s=60.0, cap=3, proven=False)
    assert may_submit(failed, 60.5, window_s=60.0, cap=3, proven=False)  # the first failure left the window
    assert may_submit(failed[:2], 3.0, window_s=60.0, cap=3, proven=False)


def test_a_proven_model_is_never_held_back() -> None:
    assert may_submit([0.0] * 100, 1.0, window_s=60.0, cap=3, proven=True)


def test_a_timeline_of_refusals_never_exceeds_the_cap_in_any_window() -> None:
    cap, window_s = 4, 100.0
    failed: list[float] = []
    for step in range(1000):
        now_s = step * 1.0
        # Ten failing models try every second; each try that may go out fails.
        for _ in range(10):
            if may_submit(failed, now_s, window_s=window_s, cap=cap, proven=False):
                failed.append(now_s)
    assert all(len(recent_failures([f for f in failed if f <= t], t, window_s)) <= cap for t in failed)
    assert len(failed) == cap * 10
