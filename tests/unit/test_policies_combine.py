"""The combined decision walked along a synthetic timeline: wake, keep, pre-warm, schedule, drain."""

from __future__ import annotations

from dataclasses import replace

from policies.combine import POLICY_MIXES, decide, desired_replicas
from policies.forecast import new_forecast, observe_slot
from policies.reactive import moving_average_replicas, reactive_replicas
from policies.types import LoadSnapshot, ModelState, Occurrence, PolicyMix, ScalingSpec

DAY = 86_400.0
SPEC = ScalingSpec(name="m", max_replicas=4, expected_cold_start_s=150.0, cold_start_p99_s=400.0)


def state(mix: str, load: LoadSnapshot, **kw: object) -> ModelState:
    return replace(ModelState(spec=SPEC, load=load, mix=POLICY_MIXES[mix]), **kw)  # type: ignore[arg-type]


def test_reactive_wakes_from_zero_and_follows_load() -> None:
    assert reactive_replicas(LoadSnapshot(queue_depth=1), SPEC)[0] == 1
    assert reactive_replicas(LoadSnapshot(in_flight=40.0, ready_replicas=2), SPEC)[0] == 3
    saturated = LoadSnapshot(in_flight=4.0, ready_replicas=2, num_requests_waiting=3.0, kv_cache_usage_perc=0.95)
    replicas, why = reactive_replicas(saturated, SPEC)
    assert replicas == 3
    assert "kv cache" in why
    queued = LoadSnapshot(in_flight=4.0, ready_replicas=1, queue_depth=2, oldest_wait_s=9.0)
    assert reactive_replicas(queued, SPEC)[0] == 2
    assert reactive_replicas(LoadSnapshot(), SPEC)[0] == 0


def test_moving_average_is_zero_without_recent_load() -> None:
    assert moving_average_replicas(LoadSnapshot(), SPEC, 5.0)[0] == 0
    assert moving_average_replicas(LoadSnapshot(recent_rate_per_s=10.0), SPEC, 5.0)[0] == 4


def test_fixed_keepalive_timeline() -> None:
    t0 = 10_000.0
    cold = state("keepalive-10m", LoadSnapshot(queue_depth=1))
    replicas, reasons = desired_replicas(cold, t0)
    assert replicas == 1
    assert any(r.policy == "reactive" and r.replicas == 1 for r in reasons)
    warm = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=t0 + 5.0)
    d = decide(state("keepalive-10m", warm), t0 + 300.0)
    assert d.replicas == 1
    assert d.keepalive_s == 600.0
    d = decide(state("keepalive-10m", warm), t0 + 605.0)
    assert d.replicas == 0
    assert d.keepalive_s is None
    assert "scale to zero" in d.explain()


def test_always_on_never_scales_to_zero_and_max_caps() -> None:
    idle = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=0.0)
    assert decide(state("always-on", idle), 1e9).replicas == 1
    busy = LoadSnapshot(held_replicas=1, ready_replicas=1, in_flight=500.0, last_activity_s=0.0)
    d = decide(state("always-on", busy), 1.0)
    assert d.replicas == SPEC.max_replicas
    assert any(r.policy == "max-replicas" for r in d.reasons)


def test_min_replicas_holds() -> None:
    s = replace(state("keepalive-5m", LoadSnapshot()), spec=replace(SPEC, min_replicas=2))
    assert decide(s, 0.0).replicas == 2


def test_forecast_prewarms_and_schedule_asks_ahead() -> None:
    fc = new_forecast()
    for day in range(3):
        fc = observe_slot(fc, day * DAY + 60 * 600.0, 12.0)  # 10:00 busy
        fc = observe_slot(fc, day * DAY + 59 * 600.0, 0.0)
    ten = 3 * DAY + 60 * 600.0
    s = state("slurmless", LoadSnapshot(), forecast=fc)
    d = decide(s, ten - 100.0)
    assert d.replicas == 1
    assert any(r.policy == "forecast" and r.replicas == 1 for r in d.reasons)
    assert d.recheck_at_s > ten - 100.0
    lecture = (Occurrence(ten + 7200.0, ten + 9000.0, 3, "ical:lecture"),)
    s = state("slurmless", LoadSnapshot(), occurrences=lecture)
    assert decide(s, ten + 7200.0 - 401.0).replicas == 0
    d = decide(s, ten + 7200.0 - 400.0)
    assert d.replicas == 3
    assert any(r.policy == "schedule" for r in d.reasons)
    assert decide(s, ten + 9000.0).replicas == 0


def test_forecast_shortens_keepalive_when_slots_ahead_are_quiet() -> None:
    fc = new_forecast()
    for day in range(3):
        for slot in range(144):
            fc = observe_slot(fc, day * DAY + slot * 600.0, 0.0)
    t = 3 * DAY + 1000.0
    warm = LoadSnapshot(held_replicas=1, ready_replicas=1, last_activity_s=t)
    mix = PolicyMix(keepalive="fixed", fixed_keepalive_s=3600.0, forecast=True)
    # A fixed keep-alive is never shortened; a learnt one is, to the floor.
    s_fixed = ModelState(spec=SPEC, load=warm, forecast=fc, mix=mix)
    assert decide(s_fixed, t + 1000.0).replicas == 1
    s_learnt = ModelState(spec=SPEC, load=warm, forecast=fc, mix=replace(mix, keepalive="histogram"))
    assert decide(s_learnt, t + 100.0).replicas == 1
    d = decide(s_learnt, t + SPEC.keepalive_floor_s + 1.0)
    assert d.replicas == 0
    assert "floor" in d.explain()


def test_every_named_mix_decides() -> None:
    for name in POLICY_MIXES:
        d = decide(state(name, LoadSnapshot(queue_depth=1)), 0.0)
        assert d.replicas >= 1, name
