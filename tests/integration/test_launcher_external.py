"""The launcher never starts anything for an external model (it is served elsewhere), whatever asks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from testing.launcher import RunningLauncher, cancel_all, local_settings, wait_for
from warmpool.external import External
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources
from warmpool.warm import WarmBoard, WarmRequest


@pytest.mark.slurm
async def test_a_warm_request_for_an_external_model_submits_no_job(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(
        redis_url=redis_server.url, slurm_conf=slurm_cluster.conf_path, output_dir=tmp_path / "jobs", tick_s=3600.0
    )
    keys = Keys(settings.redis.key_prefix)
    local = ModelSpec(
        name="local",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(max_replicas=1),
    )
    ext = ModelSpec(name="ext", external=External(url="https://api.example.org/v1"), resources=Resources(gpus=0))
    store = ModelStore(redis_client, keys)
    await store.put(local)
    await store.put(ext)
    now = time.time()
    board = WarmBoard(redis_client, keys)
    # Written straight to Redis (the admin API refuses to warm an external model): the launcher must not act on it.
    for name in ("ext", "local"):
        await board.request(WarmRequest(model=name, replicas=1, until_s=now + 600, requested_s=now))
    run = RunningLauncher(settings)
    try:
        await wait_for(lambda: _leading(run), timeout_s=20, what="leadership")
        report = await run.service.launcher.tick(now_s=now + 1)
        assert "ext" not in report.desired
        assert [s for s in report.submitted if "ext" in str(s)] == []
        assert len(report.submitted) == 1  # the local model's warm request is honoured
    finally:
        await run.close()
        await cancel_all(settings)


async def _leading(run: RunningLauncher) -> bool:
    return run.service.is_leader
