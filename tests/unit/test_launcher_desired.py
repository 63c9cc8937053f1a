"""launcher/desired.py: warmpool's state mapped into the policies, walked along synthetic timelines."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from launcher.desired import (
    FOLD_GRACE_S,
    RECENT_SLOTS,
    BudgetAsk,
    DecisionMemo,
    DemandForecast,
    ModelLoad,
    decision_expires_s,
    demand_rate_per_s,
    desired_record,
    desired_replicas,
    drivers,
    finished_slots_end,
    fit_to_budget,
    fold_demand,
    schedule_occurrences,
    why,
    with_cap,
)
from policies.types import Decision, Reason
from warmpool.keys import DEMAND_SLOT_S
from warmpool.schedule_store import ScheduleKind, ScheduleSpec
from warmpool.specs import ModelSpec, Policy, Resources
from warmpool.warm import WarmRequest

DAY_S = 86_400
SLOT = DEMAND_SLOT_S
COLD_S = 300.0
# Monday 2024-01-08 00:00 UTC: every timeline below starts three weeks later.
MONDAY_S = datetime(2024, 1, 8, tzinfo=UTC).timestamp()


def spec(name: str = "m", gpus: int = 1, **policy: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/m",
        resources=Resources(gpus=gpus, time_limit_min=60),
        policy=Policy.model_validate({"max_replicas": 2, "keepalive_min_s": 60, "keepalive_max_s": 120, **policy}),
    )


def idle(**fields: object) -> ModelLoad:
    base: dict[str, object] = {
        "queue_depth": 0,
        "oldest_wait_s": 0.0,
        "in_flight": 0,
        "ready": 0,
        "held": 0,
        "last_request_s": None,
        "idle_counts": {},
    }
    base.update(fields)
    return ModelLoad(**base)  # type: ignore[arg-type]


def decide_at(model: ModelSpec, now_s: float, load: ModelLoad | None = None, **inputs: object) -> Decision:
    return desired_replicas(
        model,
        load or idle(),
        now_s,
        expected_cold_start_s=COLD_S,
        default_keepalive_s=600.0,
        **inputs,  # type: ignore[arg-type]
    )


def lecture_demand(weeks: int) -> dict[int, int]:
    """Requests every day from 09:00 to 10:00 UTC for `weeks` weeks from MONDAY_S."""
    counts: dict[int, int] = {}
    for day in range(7 * weeks):
        first = int((MONDAY_S + day * DAY_S + 9 * 3600) // SLOT)
        for slot in range(first, first + 3600 // SLOT):
            counts[slot] = 12
    return counts


# --- demand history -> forecast ---------------------------------------------------------------


def test_no_request_ever_means_no_forecast() -> None:
    assert fold_demand(None, {}, 1000) is None
    assert fold_demand(None, {5: 0}, 1000) is None


def test_history_starts_at_the_first_request_not_at_the_window() -> None:
    demand = fold_demand(None, {100: 3, 104: 1}, 110)
    assert demand is not None
    assert demand.next_slot == 110
    assert sum(demand.forecast.day_seen) == 10  # slots 100..109: earlier ones are unknown, not empty
    assert demand.recent_counts == (1, 0, 0, 0, 0, 0)[-RECENT_SLOTS:]


def test_folding_slot_by_slot_equals_folding_at_once() -> None:
    counts = lecture_demand(weeks=1)
    end = max(counts) + 20
    at_once = fold_demand(None, counts, end)
    stepwise: DemandForecast | None = None
    for upto in range(min(counts) + 1, end + 1):
        stepwise = fold_demand(stepwise, counts, upto)
    assert at_once == stepwise


def test_a_slot_is_folded_only_after_its_grace() -> None:
    start_s = 1000.0 * SLOT
    assert finished_slots_end(start_s + FOLD_GRACE_S - 1) == 999
    assert finished_slots_end(start_s + FOLD_GRACE_S) == 1000


def test_forecast_prewarms_ahead_of_the_daily_lecture_by_the_cold_start() -> None:
    demand = fold_demand(None, lecture_demand(weeks=3), int((MONDAY_S + 21 * DAY_S) // SLOT))
    assert demand is not None
    nine_s = MONDAY_S + 21 * DAY_S + 9 * 3600
    early = decide_at(spec(), nine_s - COLD_S - SLOT, forecast=demand.forecast)
    ahead = decide_at(spec(), nine_s - COLD_S + 1, forecast=demand.forecast)
    night = decide_at(spec(), nine_s - 6 * 3600, forecast=demand.forecast)
    assert (early.replicas, ahead.replicas, night.replicas) == (0, 1, 0)
    assert [r.policy for r in drivers(ahead)] == ["forecast"]
    assert "forecast=1" in why(ahead)


def test_the_budget_values_a_model_by_its_recent_and_forecast_rate() -> None:
    assert demand_rate_per_s(None, 0.0) == 0.0
    demand = fold_demand(None, {10: 6, 11: 6}, 12)
    assert demand is not None
    assert demand_rate_per_s(demand, 12 * SLOT) == pytest.approx(6 / SLOT)


# --- schedules --------------------------------------------------------------------------------


ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//EN
BEGIN:VEVENT
UID:l1@test
SUMMARY:Deep Learning lecture
DTSTART;TZID=Europe/Berlin:20240129T101500
DTEND;TZID=Europe/Berlin:20240129T114500
RRULE:FREQ=WEEKLY;COUNT=10
END:VEVENT
END:VCALENDAR
"""


@pytest.mark.parametrize(
    ("schedule", "start_s"),
    [
        (
            ScheduleSpec(
                id="morning",
                model="m",
                kind=ScheduleKind.CRON,
                expression="0 9 * * 1-5",
                timezone="Europe/Berlin",
                duration_s=5400,
            ),
            datetime(2024, 1, 29, 8, 0, tzinfo=UTC).timestamp(),  # 09:00 in Berlin (CET)
        ),
        (
            ScheduleSpec(id="dl", model="m", kind=ScheduleKind.ICS, ics=ICS, timezone="Europe/Berlin"),
            datetime(2024, 1, 29, 9, 15, tzinfo=UTC).timestamp(),
        ),
    ],
    ids=["cron", "ics"],
)
def test_a_schedule_asks_for_a_replica_from_one_cold_start_before_its_window(
    schedule: ScheduleSpec, start_s: float
) -> None:
    now_s = start_s - 3600
    occs = schedule_occurrences([schedule], now_s, now_s + DAY_S)
    assert occs[0].start_s == start_s
    before = decide_at(spec(), start_s - COLD_S - 1, occurrences=occs)
    lead = decide_at(spec(), start_s - COLD_S + 1, occurrences=occs)
    during = decide_at(spec(), start_s + 1800, occurrences=occs)
    after = decide_at(spec(), occs[0].end_s + 1, occurrences=occs)
    assert (before.replicas, lead.replicas, during.replicas, after.replicas) == (0, 1, 1, 0)
    assert [r.policy for r in drivers(lead)] == ["schedule"]
    assert before.recheck_at_s == pytest.approx(start_s - COLD_S)
    assert "starts in" in why(lead)


def test_the_schedule_lead_can_differ_from_the_forecast_lead() -> None:
    occ_start_s = MONDAY_S + 9 * 3600
    schedule = ScheduleSpec(id="s", model="m", kind=ScheduleKind.CRON, expression="0 9 * * *", duration_s=600)
    occs = schedule_occurrences([schedule], occ_start_s - 3600, occ_start_s + 3600)
    at_s = occ_start_s - 500
    assert decide_at(spec(), at_s, occurrences=occs).replicas == 0
    assert decide_at(spec(), at_s, occurrences=occs, schedule_lead_s=600.0).replicas == 1


# --- warm requests, caps ----------------------------------------------------------------------


def test_a_warm_request_holds_like_min_replicas_until_its_deadline() -> None:
    warm = WarmRequest(model="m", replicas=1, until_s=5000.0, requested_s=1000.0, requested_by="alice")
    held = decide_at(spec(), 4000.0, idle(ready=1, held=1), warm=warm)
    ended = decide_at(spec(), 5001.0, idle(ready=1, held=1), warm=warm)
    assert held.replicas == 1 and ended.replicas == 0
    assert [r.policy for r in drivers(held)] == ["warm"]
    assert "by alice" in why(held)
    assert held.recheck_at_s <= 5000.0


def test_a_warm_request_is_capped_at_max_replicas() -> None:
    warm = WarmRequest(model="m", replicas=5, until_s=5000.0, requested_s=1000.0)
    decision = decide_at(spec(), 2000.0, warm=warm)
    assert decision.replicas == 2
    assert {r.policy for r in drivers(decision)} == {"warm", "max-replicas"}


def test_idle_model_goes_to_zero_after_its_keepalive_and_says_why() -> None:
    last_s = 10_000.0
    # The operator pinned the window (keepalive_min_s = keepalive_max_s = 120 s): the price cannot move it.
    pinned = spec(keepalive_min_s=120, keepalive_max_s=120)
    kept = decide_at(pinned, last_s + 119, idle(ready=1, held=1, last_request_s=last_s))
    dropped = decide_at(pinned, last_s + 121, idle(ready=1, held=1, last_request_s=last_s))
    assert (kept.replicas, dropped.replicas) == (1, 0)
    assert [r.policy for r in drivers(kept)] == ["idle-to-zero"]
    assert drivers(dropped) == ()
    assert why(dropped).startswith("no policy asks for a replica: idle 121s")


def test_a_cap_is_a_reason_and_never_raises() -> None:
    decision = decide_at(spec(), 0.0, idle(queue_depth=1))
    capped = with_cap(decision, 0, "no-waiters", "nobody waited")
    assert capped.replicas == 0 and drivers(capped) == (Reason("no-waiters", 0, "nobody waited"),)
    assert with_cap(decision, 5, "no-waiters", "x") is decision


def test_the_desired_record_carries_every_reason_for_status_and_events() -> None:
    decision = decide_at(spec(min_replicas=1), 123.0)
    record = desired_record(decision, 123.0)
    assert record["replicas"] == 1 and record["at_s"] == 123.0
    assert record["drivers"] == ["min-replicas"]
    assert {"policy": "min-replicas", "replicas": 1, "detail": "configured minimum"} in record["reasons"]


# --- the GPU budget ---------------------------------------------------------------------------


def one_replica(name: str, **ask: object) -> BudgetAsk:
    model = spec(name)
    return BudgetAsk(spec=model, decision=decide_at(model, 0.0, idle(queue_depth=1)), **ask)  # type: ignore[arg-type]


def test_without_a_budget_every_ask_is_granted() -> None:
    asks = [one_replica("a"), one_replica("b")]
    assert {m: d.replicas for m, d in fit_to_budget(asks, None).items()} == {"a": 1, "b": 1}


def test_when_the_budget_is_full_the_replica_cheapest_to_release_gives_way() -> None:
    asks = [one_replica("a-quiet", release_wait_s=(2.0,)), one_replica("busy", release_wait_s=(500.0,))]
    fitted = fit_to_budget(asks, 1)
    assert (fitted["a-quiet"].replicas, fitted["busy"].replicas) == (0, 1)
    assert [r.policy for r in drivers(fitted["a-quiet"])] == ["budget"]
    assert "GPU budget 1 full" in why(fitted["a-quiet"])
    assert drivers(fitted["busy"]) == drivers(asks[1].decision)


def test_floors_come_before_value_and_multi_gpu_replicas_count_their_gpus() -> None:
    floor = BudgetAsk(spec=spec("floor"), decision=decide_at(spec("floor", min_replicas=1), 0.0), floor=1)
    busy = one_replica("busy", release_wait_s=(150.0,))
    big = BudgetAsk(spec=spec("big", gpus=2), decision=decide_at(spec("big", gpus=2), 0.0, idle(queue_depth=1)))
    fitted = fit_to_budget([floor, busy, big], 2)
    assert {m: d.replicas for m, d in fitted.items()} == {"floor": 1, "busy": 1, "big": 0}


def test_a_remembered_decision_is_what_deciding_again_would_say() -> None:
    """Walk two days minute by minute, reusing decisions as the launcher does (same inputs, not
    expired): every reused answer equals a fresh one, and most minutes reuse."""
    model = spec(keepalive_min_s=600, keepalive_max_s=1200)
    start_s = MONDAY_S + 21 * DAY_S
    demand = fold_demand(None, lecture_demand(3), int(start_s // SLOT))
    assert demand is not None
    lecture = ScheduleSpec(model="m", kind=ScheduleKind.CRON, expression="0 14 * * 1-5", duration_s=3600)
    occurrences = schedule_occurrences([lecture], start_s, start_s + 3 * DAY_S)
    memo = DecisionMemo()
    load = idle()
    for minute in range(2 * 24 * 60):
        now_s = start_s + 60 * minute
        if minute % 700 == 100:
            load = idle(held=1, ready=1, last_request_s=now_s)  # a burst of use, then quiet
        elif minute % 700 == 500:
            load = idle()  # its replica drained
        key: tuple[object, ...] = (model, load, COLD_S, demand.forecast, occurrences, None)
        fresh = decide_at(model, now_s, load, forecast=demand.forecast, occurrences=occurrences)
        reused = memo.get("m", key, now_s)
        if reused is None:
            memo.put("m", key, fresh, now_s, decision_expires_s(fresh, load.last_request_s))
        else:
            # The details ("idle 60s < ...") age; the number and the policies behind it must not.
            assert reused.replicas == fresh.replicas, minute
            assert {r.policy for r in drivers(reused)} == {r.policy for r in drivers(fresh)}, minute
    assert memo.hits > 3 * memo.misses  # a tick a minute here; production ticks every 5 s


def test_decision_expiry_includes_the_keep_alive_deadline() -> None:
    held = idle(held=1, ready=1, last_request_s=1000.0)
    decision = decide_at(spec(keepalive_min_s=60, keepalive_max_s=120), 1010.0, held)
    assert decision.replicas == 1 and decision.keepalive_s is not None
    assert decision_expires_s(decision, 1000.0) == 1000.0 + decision.keepalive_s
    assert decide_at(spec(keepalive_min_s=60, keepalive_max_s=120), 1000.0 + decision.keepalive_s, held).replicas == 0
