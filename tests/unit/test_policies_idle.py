"""Idle-to-zero: the learnt keep-alive and the drain decision, on synthetic timelines."""

from __future__ import annotations

from policies.idle import keep_warm, keepalive_for, learnt_keepalive_s, observe_idle
from policies.types import IdleHistogram, LoadSnapshot, PolicyMix, ScalingSpec

SPEC = ScalingSpec(name="m", expected_cold_start_s=150.0, cold_start_value_s=600.0, default_keepalive_s=600.0)
HIST = PolicyMix(keepalive="histogram")


def test_little_history_uses_the_default() -> None:
    hist = observe_idle(IdleHistogram(), [480.0, 490.0], SPEC)
    assert hist.keepalive_s is None
    assert keepalive_for(hist, SPEC, HIST) == 600.0


def test_short_regular_gaps_are_waited_through() -> None:
    # Gaps of 8 minutes: idling through one (480 s) is cheaper than a cold start (150 s floor + 600 s).
    hist = observe_idle(IdleHistogram(), [480.0] * 20, SPEC)
    assert hist.keepalive_s == 540.0
    assert keepalive_for(hist, SPEC, HIST) == 540.0


def test_long_gaps_fall_back_to_the_floor() -> None:
    # Gaps of 30 minutes cost more idle than the cold start they would avoid: keep only the floor.
    hist = observe_idle(IdleHistogram(), [1800.0] * 20, SPEC)
    assert hist.keepalive_s == SPEC.keepalive_floor_s == 150.0


def test_floor_scales_with_cold_start_cost() -> None:
    slow = ScalingSpec(name="big", expected_cold_start_s=600.0, keepalive_floor_factor=1.0)
    hist = observe_idle(IdleHistogram(), [5.0] * 50, slow)
    assert hist.keepalive_s is not None
    assert hist.keepalive_s >= 600.0


def test_observe_is_pure_and_ignores_burst_gaps() -> None:
    before = IdleHistogram()
    after = observe_idle(before, [0.1, 0.5, 120.0, float("inf")], SPEC)
    assert before.total == 0
    assert after.total == 1
    assert after.counts[2] == 1


def test_keep_warm_walks_a_timeline() -> None:
    t0 = 1_000_000.0
    load = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=t0)
    replicas, _, deadline = keep_warm(load, 300.0, t0 + 100.0)
    assert replicas == 1
    assert deadline == t0 + 300.0
    replicas, why, _ = keep_warm(load, 300.0, t0 + 300.0)
    assert replicas == 0
    assert "scale to zero" in why


def test_never_drains_while_requests_wait_or_run() -> None:
    t0 = 0.0
    waiting = LoadSnapshot(held_replicas=1, queue_depth=2, last_activity_s=t0)
    assert keep_warm(waiting, 60.0, t0 + 10_000.0)[0] == 1
    running = LoadSnapshot(held_replicas=1, ready_replicas=1, in_flight=1.0, last_activity_s=t0)
    assert keep_warm(running, 60.0, t0 + 10_000.0)[0] == 1


def test_nothing_held_nothing_kept() -> None:
    assert keep_warm(LoadSnapshot(), 600.0, 5.0)[0] == 0


def test_cost_optimum_respects_the_ceiling() -> None:
    hist = IdleHistogram(counts=(0,) * 50 + (100,) + (0,) * 189)  # gaps of 50-51 minutes
    precious = ScalingSpec(name="m", cold_start_value_s=10_000_000.0, max_keepalive_s=3600.0)
    assert learnt_keepalive_s(hist, precious) == 51 * 60.0
    # Holding up to a ceiling below the gaps would only add idle time: keep the floor.
    capped = ScalingSpec(name="m", cold_start_value_s=10_000_000.0, max_keepalive_s=2400.0)
    assert learnt_keepalive_s(hist, capped) == capped.keepalive_floor_s


def test_gaps_before_bursts_are_worth_holding_through() -> None:
    # 30-minute gaps: a lone request after each is not worth 30 idle minutes, a burst of 50 is.
    spec = ScalingSpec(name="m", expected_cold_start_s=150.0, keepalive_event_value_s=0.0, cold_request_value_s=150.0)
    lone = observe_idle(IdleHistogram(), [1800.0] * 20, spec, hits=[1.0] * 20)
    burst = observe_idle(IdleHistogram(), [1800.0] * 20, spec, hits=[50.0] * 20)
    assert lone.keepalive_s == spec.keepalive_floor_s
    assert burst.keepalive_s == 1860.0
    assert sum(burst.hits) == 1000.0
