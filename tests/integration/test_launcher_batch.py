"""Batch demand is a class of its own, on the real local Slurm cluster.

It starts nothing unless `launcher.batch_cold_starts` allows it; then a backlog starts batch jobs by
its size (preemptible, with a `--time-min` backfill may fit), which are never renewed, are busy while
lines are pending, go once the backlog is done, and never enter the demand history that pre-warms learn from.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.lifecycle import BATCH_END
from slurm.localcluster import LocalCluster
from slurm.localcluster_conf import PREEMPT_PARTITION
from slurmless.localredis import LocalRedis
from testing.launcher import RunningLauncher, active_jobs, cancel_all, local_settings, records, wait_for
from warmpool.batches import BatchDoc, Batches, TakeOutcome
from warmpool.instances import InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

S = InstanceState
LINES = 2500


@pytest.mark.slurm
async def test_a_backlog_starts_batch_jobs_that_run_until_their_walltime(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(
        redis_url=redis_server.url,
        slurm_conf=slurm_cluster.conf_path,
        output_dir=tmp_path / "jobs",
        tick_s=3600.0,
        batch_lines_per_instance_hour=1000.0,
        batch_max_instances=2,
        batch_time_min_min=5,
        preemptible_partitions=[PREEMPT_PARTITION],
    )
    keys = Keys(settings.redis.key_prefix)
    spec = ModelSpec(
        name="bulk",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(max_replicas=3, keepalive_min_s=10, keepalive_max_s=20),
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
        total=LINES,
        good=LINES,
    )
    assert await batches.create(doc, cap=5)
    await batches.load("batch-b", good=LINES, chunk=LINES, now_s=now)
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
        # 2,500 lines at 1,000 per instance-hour ask 3 instances; batch_max_instances allows 2.
        assert len(started.submitted) == 2 and started.desired["bulk"] == 2
        jobs = await active_jobs(settings)
        assert len(jobs) == 2
        assert [j.partition for j in jobs] == [PREEMPT_PARTITION] * 2
        for job in jobs:
            assert "TimeMin=00:05:00" in slurm_cluster.run(["scontrol", "show", "job", str(job.job_id)])
        assert all(r.batch for r in await records(redis_client, settings))
        # Batch demand is not interactive demand: nothing a pre-warm or a keep-alive learns from.
        assert (await launcher.history.get("bulk")).last_activity_s is None

        async def both_ready() -> bool:
            await launcher.tick(now_s=time.time())
            return len(await records(redis_client, settings, S.READY)) == 2

        await wait_for(both_ready, timeout_s=90, what="two ready batch instances", poll_s=0.5)
        ready = await records(redis_client, settings, S.READY)
        end_s = min(r.end_time_s or 0.0 for r in ready)
        assert end_s > time.time() + 60
        # Near their walltime (well inside the interactive renewal lead) and long past the keep-alive, with
        # lines pending: no successor, no drain.
        near_end = await launcher.tick(now_s=end_s - 30)
        assert near_end.submitted == [] and near_end.draining == []
        assert sorted(r.id for r in await records(redis_client, settings, S.READY)) == sorted(r.id for r in ready)

        # At their walltime less batch_signal_lead_s the launcher ends them itself (no Slurm warning, which may
        # come half a minute early) and, lines still pending, submits batch jobs for the next gap.
        ended = await launcher.tick(now_s=end_s - 5)
        assert sorted(ended.draining) == sorted(r.id for r in ready)
        assert {r.reason for r in await records(redis_client, settings) if r.id in ended.draining} == {BATCH_END}
        assert len(ended.submitted) == 2
        # The backlog is done: batch jobs not serving yet are cancelled.
        await redis_client.delete(keys.batch_pending("batch-b"))
        done = await launcher.tick(now_s=end_s - 3)
        assert sorted(done.draining) == sorted(ended.submitted) and done.submitted == []
    finally:
        await run.close()
        await cancel_all(settings)


async def _leading(run: RunningLauncher) -> bool:
    return run.service.is_leader
