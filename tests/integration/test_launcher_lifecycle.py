"""The launcher against the real local Slurm cluster and Redis, with the engine simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.lifecycle import JOB_START
from launcher.service import LauncherService
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import active_jobs, engine_pid, launcher_env, wait_for
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import AdmitOutcome, Routing
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

LOAD_TIME_S = 2.0
"""squeue reports job start times in whole seconds."""


def small_model(name: str, **policy: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy.model_validate({"max_replicas": 1, **policy}),
    )


class Running:
    """A LauncherService running in this event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = LauncherService(settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await self.task


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path / "jobs", load_time_s=LOAD_TIME_S) as pair:
        yield pair


async def instances_in(client: aioredis.Redis, settings: Settings, state: InstanceState) -> list[InstanceRecord]:
    store = InstanceStore(client, Keys(settings.redis.key_prefix))
    return [r for r in await store.all() if r.state is state]


async def test_fifty_demand_signals_make_one_job_that_grants_the_waiting_ticket(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(small_model("cold"))
    run = Running(settings)
    try:
        await wait_for(lambda: _true(run.service.is_leader), timeout_s=10, what="leadership")
        # A queued client, as the gateway leaves it: its ticket is granted when the instance is ready.
        routing = Routing(client, keys)
        admission = await routing.admit(
            "cold", "gw1", "req1", now_s=time.time(), queue_max=10, global_max=100, signal_demand=False
        )
        assert admission.outcome is AdmitOutcome.QUEUED
        await routing.heartbeat("gw1", now_s=time.time(), ttl_s=300)
        # 50 simultaneous signals: 25 over pub/sub (the gateway's path), 25 direct calls (arq's path).
        await asyncio.gather(
            *(client.publish(keys.demand_channel, "cold") for _ in range(25)),
            *(run.service.demand("cold") for _ in range(25)),
        )
        ready = await wait_for(
            lambda: _first(instances_in(client, settings, InstanceState.READY)), timeout_s=90, what="a ready instance"
        )
        jobs = await active_jobs(settings)
        assert len(jobs) == 1
        assert jobs[0].instance_id == ready.id
        # How soon after the job's start it is ready is a speed, measured by `python -m bench.cold_start`
        # (ratios in one run), not asserted here: on a loaded machine any bound is a coin toss.
        ts = ready.timestamps
        print(
            f"\nSlurm's job start (whole s) -> ready {ts['ready'] - ts[JOB_START]:.2f}s; "
            f"registered -> ready {ts['ready'] - ts['loading']:.2f}s; load time {LOAD_TIME_S}s"
        )
        ticket = await routing.ticket("req1")
        assert ticket.get("state") == "granted" and ticket.get("iid") == ready.id
        # Later ticks never submit a second job for the same demand.
        await asyncio.sleep(3 * settings.launcher.tick_s)
        assert len(await active_jobs(settings)) == 1
        all_records = await InstanceStore(client, keys).all()
        assert len(all_records) == 1
    finally:
        await run.close()


async def _true(value: bool) -> bool:
    return value


async def _first(records: asyncio.Future[list[InstanceRecord]] | object) -> InstanceRecord | None:
    found = await records  # type: ignore[misc]
    return found[0] if found else None


async def _ready_other_than(client: aioredis.Redis, settings: Settings, old: str) -> InstanceRecord | None:
    return next((r for r in await instances_in(client, settings, InstanceState.READY) if r.id != old), None)


async def _record(client: aioredis.Redis, settings: Settings, iid: str) -> InstanceRecord | None:
    return await InstanceStore(client, Keys(settings.redis.key_prefix)).get(iid)


async def test_idle_instance_is_drained_and_cancelled(env: tuple[Settings, aioredis.Redis]) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(small_model("idle", keepalive_min_s=1.0, keepalive_max_s=2.0))
    run = Running(settings)
    try:
        routing = Routing(client, keys)
        await routing.heartbeat("gw1", now_s=time.time(), ttl_s=300)
        await routing.admit("idle", "gw1", "r1", now_s=time.time(), queue_max=10, global_max=100)
        ready = await wait_for(
            lambda: _first(instances_in(client, settings, InstanceState.READY)), timeout_s=90, what="ready"
        )
        assert (await routing.ticket("r1")).get("state") == "granted"
        assert await routing.release("gw1", "r1") == 0
        gone = await wait_for(
            lambda: _gone(client, settings, ready.id), timeout_s=60, what="the idle instance to be gone"
        )
        assert gone.reason == "idle: scaling down"
        await wait_for(lambda: _no_jobs(settings), timeout_s=30, what="squeue to show no job of ours")
        assert await routing.inflight("idle") == {}
    finally:
        await run.close()


async def _gone(client: aioredis.Redis, settings: Settings, iid: str) -> InstanceRecord | None:
    record = await _record(client, settings, iid)
    return record if record is not None and record.state is InstanceState.GONE else None


async def _failed(client: aioredis.Redis, settings: Settings, iid: str) -> InstanceRecord | None:
    record = await _record(client, settings, iid)
    return record if record is not None and record.state is InstanceState.FAILED else None


async def test_scancel_and_engine_kill_fail_the_instance_and_replace_it(
    env: tuple[Settings, aioredis.Redis], slurm_cluster: LocalCluster
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(small_model("steady", min_replicas=1))
    run = Running(settings)
    try:
        first = await wait_for(
            lambda: _first(instances_in(client, settings, InstanceState.READY)), timeout_s=90, what="ready"
        )
        # scancel from outside.
        assert first.job_id is not None
        slurm_cluster.run(["scancel", first.job_id])
        failed = await wait_for(lambda: _failed(client, settings, first.id), timeout_s=60, what="failed after scancel")
        assert failed.reason == "job cancelled outside slurmless"
        second = await wait_for(
            lambda: _ready_other_than(client, settings, first.id), timeout_s=90, what="a replacement"
        )
        # kill -9 of the engine.
        pid = await wait_for(lambda: _async(engine_pid(second.id)), timeout_s=10, what="the engine's pid")
        os.kill(pid, signal.SIGKILL)
        failed = await wait_for(lambda: _failed(client, settings, second.id), timeout_s=60, what="failed after kill")
        assert failed.reason == "engine exited with code 137"
        await wait_for(lambda: _ready_other_than(client, settings, second.id), timeout_s=90, what="a replacement")
        assert len(await active_jobs(settings)) == 1
    finally:
        await run.close()


async def test_hung_engine_fails_by_health_checks_and_is_replaced(env: tuple[Settings, aioredis.Redis]) -> None:
    """An engine that stops answering (SIGSTOP: the process lives, the port accepts, nothing replies)
    is failed after `unhealthy_after` health checks in a row, by the health loop, and replaced."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(small_model("hang", min_replicas=1))
    run = Running(settings)
    pid: int | None = None
    try:
        first = await wait_for(
            lambda: _first(instances_in(client, settings, InstanceState.READY)), timeout_s=90, what="ready"
        )
        pid = await wait_for(lambda: _async(engine_pid(first.id)), timeout_s=10, what="the engine's pid")
        os.kill(pid, signal.SIGSTOP)
        failed = await wait_for(lambda: _failed(client, settings, first.id), timeout_s=30, what="failed when hung")
        assert (failed.reason or "").startswith("engine unhealthy: ")
        await wait_for(lambda: _ready_other_than(client, settings, first.id), timeout_s=90, what="a replacement")
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await run.close()


async def _async(value: int | None) -> int | None:
    return value


async def _no_jobs(settings: Settings) -> bool:
    return await active_jobs(settings) == []


async def test_healthy_instance_taken_out_of_routing_is_routed_again(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    """A gateway stops routing to an instance it could not connect to; if the instance is in fact
    healthy, the launcher routes to it again on its next tick."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    # min_replicas keeps the instance wanted: a bare demand signal with nobody waiting would rightly
    # be cancelled if the job took longer than pending_cancel_grace_s to start.
    await ModelStore(client, keys).put(small_model("blip", min_replicas=1))
    run = Running(settings)
    try:
        await wait_for(lambda: _true(run.service.is_leader), timeout_s=10, what="leadership")
        ready = await wait_for(
            lambda: _first(instances_in(client, settings, InstanceState.READY)), timeout_s=90, what="a ready instance"
        )
        routing = Routing(client, keys)
        assert await routing.deactivate("blip", ready.id) == 0

        async def routed() -> bool | None:
            return True if ready.id in await routing.inflight("blip") else None

        await wait_for(routed, timeout_s=10, what="the instance routed again")
        assert len(await active_jobs(settings)) == 1
    finally:
        await run.close()
