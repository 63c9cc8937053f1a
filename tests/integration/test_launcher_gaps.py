"""Into the gaps: `--time-min` lets backfill start an instance at once in a hole before a research job.

The cluster (its own, so nothing else holds GPUs): 2 of 4 GPUs are held by a "blocker" that ends in
3 minutes, and a 4-GPU "research" job waits behind it, so the backfill scheduler has a hole of one
to two GPUs for about 3 minutes. A slurmless instance asking for 60 minutes would delay the research
job and must wait; with `--time-min=2` backfill starts it at once with a limit that fits the hole.
The launcher reads that limit from squeue and renews before it, and the research job still starts
when the blocker ends: slurmless's jobs leave on their walltime warning instead of being killed late.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from slurm.cli_backend import SlurmCLI
from slurm.localcluster import LocalCluster
from slurm.types import JobState, SlurmJob
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env, records, wait_for
from tests.fixtures.slurm_cluster import require_slurm_binaries
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

BLOCKER_MIN = 3
TIME_MIN_MIN = 2
# The blocker leaves 10 s before its limit, so its end does not hang on Slurm's 30 s time-limit check.
BLOCKER_SLEEP_S = 60 * BLOCKER_MIN - 10
# The research job may start this much after the blocker left: the scheduler's own intervals.
START_SLACK_S = 15.0


@pytest.fixture
async def cluster() -> AsyncIterator[LocalCluster]:
    require_slurm_binaries()
    cluster = LocalCluster(gpus=4, backfill_interval_s=1)
    await cluster.astart()
    try:
        yield cluster
    finally:
        await cluster.astop()


@pytest.fixture
async def env(
    cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(cluster, redis_server, tmp_path / "jobs") as pair:
        yield pair


def _sbatch(cluster: LocalCluster, tmp_path: Path, name: str, gpus: int, minutes: int, sleep_s: float) -> int:
    out = cluster.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name=research-{name}",
            f"--gres=gpu:{gpus}",
            f"--time={minutes}",
            "--cpus-per-task=1",
            "--mem=64M",
            f"--output={tmp_path}/{name}-%j.out",
            "--wrap",
            f"sleep {sleep_s:.0f}",
        ]
    )
    return int(out.strip().split(";")[0])


async def test_time_min_starts_in_a_hole_and_the_research_job_keeps_its_start(
    cluster: LocalCluster, env: tuple[Settings, aioredis.Redis], tmp_path: Path
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    research = SlurmCLI(env={"SLURM_CONF": str(cluster.conf_path)}, job_name_prefix="research-")

    blocker_id = _sbatch(cluster, tmp_path, "blocker", gpus=2, minutes=BLOCKER_MIN, sleep_s=BLOCKER_SLEEP_S)
    blocker = await wait_for(lambda: _running(research, blocker_id), timeout_s=60, what="the blocker to run")
    big_id = _sbatch(cluster, tmp_path, "big", gpus=4, minutes=2, sleep_s=5)
    big = await wait_for(lambda: _planned(research, big_id), timeout_s=60, what="the research job's planned start")
    assert blocker.end_time is not None and big.start_time is not None
    planned_s = big.start_time.timestamp()
    assert abs(planned_s - blocker.end_time.timestamp()) <= 2, (big.start_time, blocker.end_time)

    spec = ModelSpec(
        name="gap",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60, time_min_min=TIME_MIN_MIN),
        policy=Policy(min_replicas=1, max_replicas=1),
    )
    await ModelStore(client, keys).put(spec)
    run = RunningLauncher(settings)
    try:
        first: InstanceRecord = await wait_for(
            lambda: _first_running(client, settings), timeout_s=90, what="the first instance to run"
        )
        # Backfill started it at once (not after the research job) with a limit that fits the hole.
        assert first.end_time_s is not None and first.time_limit_s is not None
        assert first.end_time_s <= planned_s + 1, (first.end_time_s, planned_s)
        assert 60 * TIME_MIN_MIN <= first.time_limit_s < 60 * 60, first.time_limit_s
        queued_s = first.timestamps[InstanceState.STARTING.value] - first.timestamps[InstanceState.PENDING.value]
        assert first.timestamps[InstanceState.STARTING.value] < planned_s - 60, queued_s

        # Its successor is submitted before that limit ends (it may wait: the research job comes first).
        successor: InstanceRecord = await wait_for(
            lambda: _successor(client, settings, first.id), timeout_s=120, what="a successor"
        )
        assert successor.created_s < first.end_time_s

        # The research job starts when the blocker ends, not when slurmless's jobs are killed late.
        started = await wait_for(
            lambda: _running(research, big_id), timeout_s=60 * BLOCKER_MIN + 90, what="the research job to start"
        )
        assert started.start_time is not None
        actual_s = started.start_time.timestamp()
        assert actual_s <= planned_s + START_SLACK_S, (started.start_time, big.start_time)
        all_records = await records(client, settings)
        # Every slurmless job that ran before the research job was fitted to end by its planned start.
        for r in all_records:
            if r.timestamps.get(InstanceState.STARTING.value, actual_s) < actual_s:
                assert r.end_time_s is not None and r.end_time_s <= planned_s + 1, (r.id, r.end_time_s, planned_s)
        print(
            f"\nfirst instance: queued {queued_s:.1f}s, limit {first.time_limit_s / 60:.0f} min (asked 60, "
            f"time-min {TIME_MIN_MIN}); successor submitted {first.end_time_s - successor.created_s:.0f}s "
            f"before its end; research job planned {time.strftime('%X', time.localtime(planned_s))}, "
            f"started {actual_s - planned_s:+.0f}s; {len(all_records)} slurmless instances in all"
        )
    finally:
        await run.close()
        for job_id in (blocker_id, big_id):
            await research.cancel(job_id)


async def _running(slurm: SlurmCLI, job_id: int) -> SlurmJob | None:
    job = await slurm.job(job_id)
    return job if job is not None and job.state is JobState.RUNNING else None


async def _planned(slurm: SlurmCLI, job_id: int) -> SlurmJob | None:
    job = await slurm.job(job_id)
    return job if job is not None and job.state is JobState.PENDING and job.start_time is not None else None


async def _first_running(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    found = await records(client, settings)
    return found[0] if found and found[0].end_time_s is not None else None


async def _successor(client: aioredis.Redis, settings: Settings, iid: str) -> InstanceRecord | None:
    return next((r for r in await records(client, settings) if r.successor_of == iid), None)
