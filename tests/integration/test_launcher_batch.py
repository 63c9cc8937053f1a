"""Batch demand is a class of its own: it starts no instance unless `launcher.batch_cold_starts` allows it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from testing.launcher import RunningLauncher, cancel_all, local_settings, wait_for
from warmpool.batches import BatchDoc, Batches, TakeOutcome
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources


@pytest.mark.slurm
async def test_batch_lines_start_a_cold_model_only_when_allowed(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(
        redis_url=redis_server.url, slurm_conf=slurm_cluster.conf_path, output_dir=tmp_path / "jobs", tick_s=3600.0
    )
    keys = Keys(settings.redis.key_prefix)
    spec = ModelSpec(
        name="bulk",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(max_replicas=1),
    )
    await ModelStore(redis_client, keys).put(spec)
    now = time.time()
    batches = Batches(redis_client, keys)
    doc = BatchDoc(
        id="batch-b",
        tenant="t",
        key_id="k",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        model="bulk",
        created_at=int(now),
        expires_at=int(now) + 3600,
        total=5,
        good=5,
    )
    assert await batches.create(doc, cap=5)
    await batches.load("batch-b", good=5, chunk=10, now_s=now)
    run = RunningLauncher(settings)
    try:
        await wait_for(lambda: _leading(run), timeout_s=20, what="leadership")
        launcher = run.service.launcher
        take = await batches.take("batch-b", "bulk", "gw1", now_s=now, lease_s=30, fraction=0.5)
        assert take.outcome is TakeOutcome.COLD
        ignored = await launcher.tick(now_s=now + 1)
        assert ignored.submitted == [] and ignored.desired.get("bulk", 0) == 0
        launcher.settings.batch_cold_starts = True
        started = await launcher.tick(now_s=now + 2)
        assert len(started.submitted) == 1
    finally:
        await run.close()
        await cancel_all(settings)


async def _leading(run: RunningLauncher) -> bool:
    return run.service.is_leader
