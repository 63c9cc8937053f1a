"""Failed starts back off exponentially (capped) and a model is retried only when its time comes."""

from __future__ import annotations

import itertools

import pytest

from launcher.health import LOADING_POLL_MIN_S, loading_probe_delay_s
from launcher.history import ModelHistory, backoff_delay_s


def history(*, failures: int, retry_at_s: float, broken: str | None = None) -> ModelHistory:
    return ModelHistory(
        load_times_s=[],
        queue_waits_s=[],
        start_failures=failures,
        retry_at_s=retry_at_s,
        broken_reason=broken,
        last_request_s=None,
    )


def test_delay_doubles_per_failure_up_to_the_cap() -> None:
    delays = [backoff_delay_s(n, base_s=10.0, max_s=600.0) for n in range(1, 9)]
    assert delays == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]


@pytest.mark.parametrize("failures", [0, -1])
def test_no_failure_no_delay(failures: int) -> None:
    assert backoff_delay_s(failures, base_s=10.0, max_s=600.0) == 0.0


def test_a_crash_after_serving_is_not_backed_off() -> None:
    # The controller passes base 0 for an instance that was ready: resubmit at once.
    assert backoff_delay_s(3, base_s=0.0, max_s=600.0) == 0.0


def test_a_long_streak_does_not_overflow() -> None:
    assert backoff_delay_s(10_000, base_s=10.0, max_s=600.0) == 600.0


def test_timeline_retries_only_after_each_growing_backoff() -> None:
    """Walk a synthetic timeline: fail, wait out the backoff, fail again, until the model is broken."""
    base_s, max_s, max_failures = 2.0, 60.0, 4
    now_s, retry_at_s = 1000.0, 0.0
    attempts: list[float] = []
    for failures in range(1, max_failures + 1):
        # The launcher's loop: try as soon as it may, the start fails 5 s later.
        while not history(failures=failures - 1, retry_at_s=retry_at_s).may_start(now_s):
            now_s += 0.5
        attempts.append(now_s)
        now_s += 5.0
        retry_at_s = now_s + backoff_delay_s(failures, base_s=base_s, max_s=max_s)
    gaps = [b - a - 5.0 for a, b in itertools.pairwise(attempts)]
    assert gaps == [2.0, 4.0, 8.0]
    broken = history(failures=max_failures, retry_at_s=retry_at_s, broken="4 failed starts in a row")
    assert not broken.may_start(now_s + 10 * max_s)


def test_may_start_at_the_retry_time_exactly() -> None:
    h = history(failures=1, retry_at_s=100.0)
    assert not h.may_start(99.99)
    assert h.may_start(100.0)


def test_loading_probes_are_fast_around_the_earliest_load_time_and_slow_for_slow_loaders() -> None:
    cap_s = 1.0
    # No load time observed yet: fast at first, then slowing to the cap.
    assert loading_probe_delay_s(0.0, 0.0, cap_s) == LOADING_POLL_MIN_S
    assert loading_probe_delay_s(3.0, 0.0, cap_s) == pytest.approx(0.4)
    assert loading_probe_delay_s(300.0, 0.0, cap_s) == cap_s
    # Observed loads of 60 s or more: slow early, a quarter of the time left as it nears, fast at 60 s.
    assert loading_probe_delay_s(10.0, 60.0, cap_s) == cap_s
    assert loading_probe_delay_s(59.0, 60.0, cap_s) == pytest.approx(0.25)
    assert loading_probe_delay_s(60.0, 60.0, cap_s) == LOADING_POLL_MIN_S
    # A cap below the floor never makes probes faster than the floor.
    assert loading_probe_delay_s(0.0, 0.0, 0.01) == LOADING_POLL_MIN_S


def test_loading_probes_walk_a_timeline_to_readiness_within_one_fast_probe() -> None:
    """A 2 s load first seen at 2 s: the probe after readiness comes at most 0.1 s + a tenth of the overrun later."""
    now_s, ready_at_s, earliest_s = 0.0, 2.37, 2.0
    while now_s < ready_at_s:
        now_s += loading_probe_delay_s(now_s, earliest_s, 1.0)
    assert now_s - ready_at_s <= LOADING_POLL_MIN_S + 0.1
