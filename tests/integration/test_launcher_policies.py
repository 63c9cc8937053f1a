"""The warm-pool policies wired into the launcher, against real Redis and the local Slurm cluster.

Ticks are driven with chosen `now_s` values (the policies never read a clock); only the jobs'
own start, registration and loading run in real time, through the launcher service's callbacks.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.desired import FORECAST_HISTORY_SLOTS, PolicyInputs
from launcher.history import HistoryStore
from policies import currency
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, active_jobs, cancel_all, local_settings, records, slurm_for, wait_for
from warmpool.events import Event, EventLog
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.routing import AdmitOutcome, Routing
from warmpool.schedule_store import ScheduleKind, ScheduleSpec, ScheduleStore
from warmpool.specs import ModelSpec, Policy, Resources
from warmpool.warm import WarmBoard, WarmRequest

DAY_S = 86_400.0
QUEUE_WAIT_S = 5.0
LOAD_S = 10.0
LEAD_S = QUEUE_WAIT_S + LOAD_S
"""The expected cold start while none was observed: p95 queue wait + p95 load, from the settings."""
KEEPALIVE_S = 30.0


def model(name: str, **policy: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy.model_validate(
            {"max_replicas": 1, "keepalive_min_s": KEEPALIVE_S, "keepalive_max_s": KEEPALIVE_S, **policy}
        ),
    )


def settings_for(slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path, **launcher: Any) -> Settings:
    return local_settings(
        redis_url=redis_server.url,
        slurm_conf=slurm_cluster.conf_path,
        output_dir=tmp_path / "jobs",
        default_queue_wait_s=QUEUE_WAIT_S,
        default_load_s=LOAD_S,
        **launcher,
    )


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    redis: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield redis
    finally:
        await redis.aclose()


async def decisions(client: aioredis.Redis, keys: Keys, name: str) -> list[Event]:
    return await EventLog(client, keys).recent(model=name, kind="scale.decision")


async def desired_of(client: aioredis.Redis, keys: Keys, name: str) -> dict[str, object]:
    raw = await awaited(client.hget(keys.desired, name))
    assert raw is not None
    value: dict[str, object] = orjson.loads(raw)
    return value


async def ready_one(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    found = await records(client, settings, InstanceState.READY)
    return found[0] if found else None


async def no_jobs(settings: Settings) -> bool:
    return not await active_jobs(settings)


async def leading(run: RunningLauncher) -> bool:
    return run.service.is_leader


# --- (a) a schedule pre-warms by the expected cold start ------------------------------------------


def ics_feed(start_s: float) -> str:
    stamp = datetime.fromtimestamp(start_s, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//slurmless test//EN\r\nBEGIN:VEVENT\r\nUID:lecture@test\r\n"
        f"SUMMARY:Lecture\r\nDTSTART:{stamp}\r\nDURATION:PT90M\r\nRRULE:FREQ=WEEKLY;COUNT=12\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


@pytest.mark.slurm
@pytest.mark.parametrize("kind", [ScheduleKind.CRON, ScheduleKind.ICS])
async def test_a_schedule_submits_a_job_one_cold_start_before_its_window(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path, kind: ScheduleKind
) -> None:
    settings = settings_for(slurm_cluster, redis_server, tmp_path)
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(model("lecture"))
    if kind is ScheduleKind.CRON:
        schedule = ScheduleSpec(
            model="lecture", kind=kind, expression="15 10 * * 1-5", timezone="Europe/Berlin", duration_s=5400
        )
    else:
        schedule = ScheduleSpec(model="lecture", kind=kind, ics=ics_feed(time.time() + 7200), timezone="Europe/Berlin")
    await ScheduleStore(client, keys).add(schedule)
    window = schedule.occurrences(time.time(), time.time() + 8 * DAY_S)[0]
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        early = await launcher.tick(now_s=window.start_s - LEAD_S - 5)
        assert early.desired == {"lecture": 0} and early.submitted == []
        assert await active_jobs(settings) == []
        ahead = await launcher.tick(now_s=window.start_s - LEAD_S + 1)
        assert ahead.desired == {"lecture": 1} and len(ahead.submitted) == 1
        jobs = await active_jobs(settings)
        assert [j.instance_id for j in jobs] == ahead.submitted
        # Inside the window nothing is added or taken away.
        during = await launcher.tick(now_s=window.start_s + 60)
        assert during.desired == {"lecture": 1} and during.submitted == [] and during.draining == []
    finally:
        await launcher.aclose()
        await cancel_all(settings)
    [event] = await decisions(client, keys, "lecture")
    assert (event.detail["replicas"], event.detail["previous"]) == (1, 0)
    assert str(event.detail["why"]).startswith(f"schedule=1 ({kind.value}:")
    assert "starts in 14s" in str(event.detail["why"])
    stored = await desired_of(client, keys, "lecture")
    assert stored["replicas"] == 1 and stored["drivers"] == ["schedule"]
    assert stored["at_s"] == window.start_s - LEAD_S + 1


# --- (b) an idle model goes to zero after its keep-alive ------------------------------------------


@pytest.mark.slurm
async def test_an_idle_model_goes_to_zero_after_its_keepalive(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    # The service serves the jobs' callbacks; its own tick loop sleeps, so the test drives every tick.
    settings = settings_for(slurm_cluster, redis_server, tmp_path, tick_s=3600.0)
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(model("idle"))
    routing = Routing(client, keys)
    run = RunningLauncher(settings)
    try:
        await wait_for(lambda: leading(run), timeout_s=20, what="leadership")
        launcher = run.service.launcher
        t0 = time.time()
        await routing.heartbeat("gw1", now_s=t0, ttl_s=600)
        admitted = await routing.admit("idle", "gw1", "r1", now_s=t0, queue_max=10, global_max=100, signal_demand=False)
        assert admitted.outcome is AdmitOutcome.QUEUED
        first = await launcher.tick(now_s=t0)
        assert first.desired == {"idle": 1} and len(first.submitted) == 1
        await wait_for(lambda: ready_one(client, settings), timeout_s=90, what="a ready instance")
        assert await routing.release("gw1", "r1") == 0
        # The waiting request was served from the moment the instance granted it: the model's last activity.
        active_s = (await HistoryStore(client, keys).get("idle")).last_activity_s
        assert active_s is not None and active_s > t0

        kept = await launcher.tick(now_s=active_s + KEEPALIVE_S - 10)
        assert kept.desired == {"idle": 1} and kept.draining == []
        dropped = await launcher.tick(now_s=active_s + KEEPALIVE_S + 10)
        assert dropped.desired == {"idle": 0} and dropped.draining == first.submitted
        await launcher.tick(now_s=active_s + KEEPALIVE_S + 11)  # the drained engine is idle: its job is cancelled
        await wait_for(lambda: no_jobs(settings), timeout_s=60, what="squeue to show no job of ours")
    finally:
        await run.close()
        await cancel_all(settings)
    events = await decisions(client, keys, "idle")
    assert [(e.detail["previous"], e.detail["replicas"]) for e in events][-1] == (1, 0)
    assert str(events[-1].detail["why"]).startswith("no policy asks for a replica: idle 40s >= ")
    assert (await desired_of(client, keys, "idle"))["replicas"] == 0


# --- (c) a warm request keeps a model up ----------------------------------------------------------


@pytest.mark.slurm
async def test_a_warm_request_keeps_an_unused_model_up_until_it_ends(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = settings_for(slurm_cluster, redis_server, tmp_path, tick_s=3600.0)
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(model("kept"))
    run = RunningLauncher(settings)
    try:
        await wait_for(lambda: leading(run), timeout_s=20, what="leadership")
        launcher = run.service.launcher
        t0 = time.time()
        # `slurmless models warm` does this (through the admin API); it also wakes the launcher at once.
        await WarmBoard(client, keys).request(
            WarmRequest(model="kept", replicas=1, until_s=t0 + 600, requested_s=t0, requested_by="lecturer")
        )
        await launcher.tick(now_s=t0)
        ready = await wait_for(lambda: ready_one(client, settings), timeout_s=90, what="a ready instance")
        # Far past the 30 s keep-alive, never used: the warm request alone holds it.
        held = await launcher.tick(now_s=t0 + 300)
        assert held.desired == {"kept": 1} and held.draining == [] and held.submitted == []
        assert [j.instance_id for j in await active_jobs(settings)] == [ready.id]
        stored = await desired_of(client, keys, "kept")
        assert stored["drivers"] == ["warm"] and "warm request by lecturer" in str(stored["why"])
        ended = await launcher.tick(now_s=t0 + 601)
        assert ended.desired == {"kept": 0} and ended.draining == [ready.id]
        await launcher.tick(now_s=t0 + 602)
        await wait_for(lambda: no_jobs(settings), timeout_s=60, what="squeue to show no job of ours")
    finally:
        await run.close()
        await cancel_all(settings)
    whys = [str(e.detail["why"]) for e in await decisions(client, keys, "kept")]
    assert any(w.startswith("warm=1 (warm request by lecturer until ") for w in whys), whys


# --- (d) the GPU budget -----------------------------------------------------------------------


@pytest.mark.slurm
async def test_with_a_full_gpu_budget_the_model_whose_wait_costs_less_gives_way(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = settings_for(slurm_cluster, redis_server, tmp_path, gpu_budget=1)
    keys = Keys(settings.redis.key_prefix)
    for name in ("a-quiet", "busy"):
        await ModelStore(client, keys).put(model(name))
    now_s = time.time()
    # The gaps the gateway recorded: a cold start of "busy" makes a burst of requests wait, of "a-quiet" one.
    for name, wait_s in (("a-quiet", 150.0), ("busy", 2000.0)):
        cells = [currency.cell(now_s - 86_400.0, g) for g in (300.0, 900.0, 3600.0)]
        gaps = currency.observe(currency.empty_history(), cells * 10, [1.0] * 30, [wait_s] * 30)
        fields = {f"c{i}": repr(v) for i, v in enumerate(gaps.counts) if v}
        await awaited(
            client.hset(keys.gaps(name), mapping=fields | {f"w{i}": repr(v) for i, v in enumerate(gaps.waits_s) if v})
        )
    routing = Routing(client, keys)
    for name in ("a-quiet", "busy"):
        admitted = await routing.admit(name, "gw1", f"r-{name}", now_s=now_s, queue_max=10, global_max=100)
        assert admitted.outcome is AdmitOutcome.QUEUED
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        first = await launcher.tick(now_s=now_s)
        again = await launcher.tick(now_s=now_s + 1)
        jobs = await active_jobs(settings)
    finally:
        await launcher.aclose()
        await cancel_all(settings)
    assert first.desired == {"a-quiet": 0, "busy": 1} == again.desired
    assert len(first.submitted) == 1 and again.submitted == []
    assert [j.instance_id for j in jobs] == first.submitted
    assert [r.model for r in await records(client, settings)] == ["busy"]
    [event] = await decisions(client, keys, "a-quiet")
    assert event.detail["replicas"] == 0
    assert str(event.detail["why"]).startswith("budget=0 (GPU budget 1 full: 1 replica(s) gave way")
    assert (await desired_of(client, keys, "a-quiet"))["drivers"] == ["budget"]


# --- bounded reads ----------------------------------------------------------------------------


async def test_demand_history_and_schedules_are_read_a_bounded_number_of_times(redis_client: aioredis.Redis) -> None:
    keys = Keys("bounded:")
    inputs = PolicyInputs(redis_client, keys)
    start_s = 1_000_000 * DEMAND_SLOT_S + 60.0
    await awaited(redis_client.hset(keys.demand("m"), mapping={"999990": 4, "999995": 2}))
    schedule = ScheduleSpec(model="m", kind=ScheduleKind.CRON, expression="0 9 * * *", duration_s=3600)
    await awaited(redis_client.hset(keys.schedules("m"), schedule.id, schedule.model_dump_json()))

    # A tick every 5 s for one slot: history is read once (the window), schedules every 30 s, expanded once.
    for i in range(DEMAND_SLOT_S // 5 - 10):
        now_s = start_s + 5 * i
        demand = await inputs.demand("m", now_s)
        occurrences = await inputs.occurrences(["m"], now_s, {"m": LEAD_S})
    assert demand is not None and demand.next_slot == 1_000_000
    assert sum(demand.forecast.day_seen) == 10
    assert occurrences["m"][0].start_s > start_s
    counters = inputs.counters
    assert (counters.demand_reads, counters.demand_slots_read) == (1, FORECAST_HISTORY_SLOTS)
    assert counters.schedule_expansions == 1
    assert counters.schedule_reads == -(-(DEMAND_SLOT_S - 50) // 30)

    # The next slot ends: one more read, of that slot alone.
    await awaited(redis_client.hset(keys.demand("m"), "1000000", "7"))
    demand = await inputs.demand("m", start_s + DEMAND_SLOT_S)
    assert demand is not None and demand.recent_counts[-1] == 7
    assert (counters.demand_reads, counters.demand_slots_read) == (2, FORECAST_HISTORY_SLOTS + 1)
