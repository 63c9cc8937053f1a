"""Launcher control-plane rules against real Redis and Slurm: one squeue per tick, the lease, adoption."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.controller import Launcher
from launcher.lease import LeaderLease
from launcher.service import LauncherService
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import active_jobs, launcher_env, slurm_for, wait_for
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import Phase, PhaseBoard
from warmpool.specs import ModelSpec, Policy, Resources


def model(name: str, **policy: object) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy.model_validate({"max_replicas": 1, **policy}),
    )


async def test_lease_has_one_holder_and_passes_on(redis_client: aioredis.Redis) -> None:
    first = LeaderLease(redis_client, "a", ttl_s=0.3)
    second = LeaderLease(redis_client, "b", ttl_s=0.3)
    assert await first.acquire_or_renew()
    assert not await second.acquire_or_renew()
    assert await first.acquire_or_renew()
    assert await second.holder() == "a"
    await asyncio.sleep(0.4)  # the leader stopped renewing: its lease lapses
    assert await second.acquire_or_renew()
    assert not await first.acquire_or_renew()
    assert not await first.release()
    assert await second.release()
    assert await first.holder() is None


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path / "jobs") as pair:
        yield pair


@pytest.mark.slurm
async def test_a_tick_makes_exactly_one_squeue_call_whatever_the_number_of_models(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    for i in range(30):
        await ModelStore(client, keys).put(model(f"m{i}"))
    slurm = slurm_for(settings)
    launcher = Launcher(client, slurm, settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        report = await launcher.tick(now_s=time.time())
    finally:
        await launcher.aclose()
    assert slurm.calls["squeue"] == 1
    assert sum(slurm.calls.values()) == 1
    assert report.desired == {f"m{i}": 0 for i in range(30)}


@pytest.mark.slurm
async def test_a_steady_tick_reads_in_bulk_and_writes_nothing(env: tuple[Settings, aioredis.Redis]) -> None:
    """With nothing changing, a tick writes no phase, desired record or event, and its Redis round
    trips do not grow with the number of models."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    for i in range(30):
        await ModelStore(client, keys).put(model(f"m{i}"))
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)

    async def writes() -> dict[str, int]:
        stats = await client.info("commandstats")
        return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("set", "mset", "hset", "xadd")}

    async def calls() -> int:
        return int((await client.info("stats"))["total_commands_processed"])

    try:
        now_s = time.time()
        await launcher.tick(now_s=now_s)
        assert len(await PhaseBoard(client, keys).many([f"m{i}" for i in range(30)])) == 30
        before, calls0 = await writes(), await calls()
        await launcher.tick(now_s=now_s + 1)
        assert await writes() == before
        per_tick = await calls() - calls0
        for i in range(30, 300):
            await ModelStore(client, keys).put(model(f"m{i}"))
        await launcher.tick(now_s=now_s + 2)  # first sight of the new models: they are written once
        before, calls0 = await writes(), await calls()
        await launcher.tick(now_s=now_s + 3)
        assert await writes() == before
        # The snapshot's Lua runs one command per key it reads; everything else is per tick, not per model.
        lua_reads_per_model = 6
        assert await calls() - calls0 - per_tick <= lua_reads_per_model * 270 + 4
    finally:
        await launcher.aclose()


@pytest.mark.slurm
async def test_a_new_leader_adopts_running_jobs_and_submits_nothing_twice(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(model("kept", min_replicas=1))
    store = InstanceStore(client, keys)

    async def ready_ids() -> list[str] | None:
        ids = [r.id for r in await store.all() if r.state is InstanceState.READY]
        return ids or None

    first = LauncherService(settings)
    stop_first = asyncio.Event()
    run_first = asyncio.create_task(first.run(stop_first))
    try:
        ready = await wait_for(ready_ids, timeout_s=90, what="a ready instance")
    finally:
        # Stop without giving up the lease, like a crash: the standby waits for the lease to lapse.
        first.is_leader = False
        stop_first.set()
        await run_first
    second = LauncherService(settings)
    stop_second = asyncio.Event()
    run_second = asyncio.create_task(second.run(stop_second))
    try:
        await wait_for(lambda: _leader(second), timeout_s=20, what="the standby to take over")
        for _ in range(6):
            await second.launcher.tick(now_s=time.time())
        assert await ready_ids() == ready
        assert len(await active_jobs(settings)) == 1
        assert len(await store.all()) == 1
    finally:
        stop_second.set()
        await run_second


async def _leader(service: LauncherService) -> bool:
    return service.is_leader


@pytest.mark.slurm
async def test_waiting_clients_learn_of_a_submission_at_once_not_on_the_next_tick(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(model("news"))
    launcher = Launcher(client, slurm_for(settings), settings.launcher, callback_url="http://127.0.0.1:9", keys=keys)
    try:
        assert (await PhaseBoard(client, keys).get("news")).phase is Phase.COLD
        iid = await launcher.on_demand("news", now_s=time.time())
        assert iid is not None
        phase = await PhaseBoard(client, keys).get("news")
        assert phase.phase is Phase.PENDING, phase
        assert phase.coming_instances == 1 and phase.eta_s is not None
    finally:
        await launcher.aclose()
