"""Faults on the real local cluster: engines that never start, and a node whose slurmd dies.

What Slurm 22.05 does when slurmd stops (measured on the local cluster, `SlurmdTimeout=5`,
`ReturnToService=2`): the node turns `NOT_RESPONDING` after about 13 s and `DOWN` after about
26 s, and the running job ends `NODE_FAIL` (reason `NodeDown`; our jobs are `--no-requeue`). The
engine itself keeps running until slurmd returns (slurmstepd outlives slurmd), so the launcher's
probes stay green until Slurm gives up on the node: the instance fails on Slurm's word. When
slurmd comes back, `ReturnToService=2` returns the node to service at once, the failed job stays
failed (it is not revived) and the waiting replacement starts. An outage shorter than the timeout
changes nothing: the job keeps running and the instance stays ready.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from launcher.history import backoff_delay_s
from slurm.localcluster import LocalCluster
from slurm.types import JobState
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import (
    RunningLauncher,
    active_jobs,
    cancel_all,
    engine_pid,
    local_settings,
    record,
    records,
    wait_for,
)
from tests.fixtures.slurm_cluster import require_slurm_binaries
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

S = InstanceState


def steady(name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(min_replicas=1, max_replicas=1),
    )


@pytest.fixture
async def client(redis_server: LocalRedis) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


# --- an engine that always crashes at start ----------------------------------------------------------

MAX_FAILURES = 3
BACKOFF_S = 2.0


async def test_a_model_that_never_starts_backs_off_then_is_marked_broken(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(
        redis_url=redis_server.url,
        slurm_conf=slurm_cluster.conf_path,
        output_dir=tmp_path / "jobs",
        engine_command=[sys.executable, "-c", "raise SystemExit(3)"],
        max_failures=MAX_FAILURES,
        failure_backoff_s=BACKOFF_S,
        max_backoff_s=60.0,
    )
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(steady("crashy"))
    run = RunningLauncher(settings)
    try:
        phase = await wait_for(lambda: _phase_failed(client, keys), timeout_s=180, what="phase FAILED")
        failed = await records(client, settings, S.FAILED)
        assert len(failed) == MAX_FAILURES
        assert all(r.reason == "engine exited with code 3" for r in failed), [r.reason for r in failed]
        # Each resubmission came no sooner than its backoff after the previous failure: 2 s, then 4 s.
        for n, (prev, nxt) in enumerate(itertools.pairwise(failed), start=1):
            wait_s = nxt.created_s - prev.timestamps[S.FAILED.value]
            assert wait_s >= backoff_delay_s(n, base_s=BACKOFF_S, max_s=60.0), (n, wait_s)
        assert phase.detail is not None and f"{MAX_FAILURES} failed starts in a row" in phase.detail
        # Broken: later ticks submit nothing more.
        ticks = _ticks(run)
        await wait_for(lambda: _true(_ticks(run) >= ticks + 4), timeout_s=30, what="4 more ticks")
        assert len(await records(client, settings)) == MAX_FAILURES
        assert await active_jobs(settings) == []
    finally:
        await run.close()
        await cancel_all(settings)


async def _phase_failed(client: aioredis.Redis, keys: Keys) -> ModelPhase | None:
    phase = await PhaseBoard(client, keys).get("crashy")
    return phase if phase.phase is Phase.FAILED else None


async def _true(value: bool) -> bool:
    return value


def _ticks(run: RunningLauncher) -> float:
    return run.service.metrics.registry.get_sample_value("slurmless_launcher_ticks_total") or 0.0


# --- a node whose slurmd dies --------------------------------------------------------------------------


@pytest.fixture
async def fragile() -> AsyncIterator[LocalCluster]:
    """A cluster of its own whose node is declared down 5 s after slurmd stops answering (as configured)."""
    require_slurm_binaries()
    cluster = LocalCluster(gpus=2, slurmd_timeout_s=5)
    await cluster.astart()
    try:
        yield cluster
    finally:
        await cluster.astop()


async def test_lost_node_fails_the_instance_and_a_replacement_starts_when_it_returns(
    fragile: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = local_settings(redis_url=redis_server.url, slurm_conf=fragile.conf_path, output_dir=tmp_path / "jobs")
    await ModelStore(client, Keys(settings.redis.key_prefix)).put(steady("fragile"))
    run = RunningLauncher(settings)
    try:
        first = await wait_for(lambda: _ready(client, settings, None), timeout_s=120, what="a ready instance")

        # An outage shorter than SlurmdTimeout: Slurm does not notice, nothing changes.
        await asyncio.to_thread(fragile.stop_slurmd)
        await asyncio.sleep(2)
        await asyncio.to_thread(fragile.start_slurmd)
        await asyncio.sleep(10)
        same = await record(client, settings, first.id)
        assert same is not None and same.state is S.READY, same
        assert [j.job_id for j in await active_jobs(settings)] == [int(first.job_id or 0)]

        # slurmd gone for good: the node goes down and the job ends NODE_FAIL.
        await asyncio.to_thread(fragile.stop_slurmd)
        lost_s = time.time()
        failed = await wait_for(lambda: _in_state(client, settings, first.id, S.FAILED), timeout_s=120, what="fail")
        assert failed.reason == "node failure: NodeDown", failed.reason
        print(f"\nslurmd stopped -> instance failed {failed.state_since_s - lost_s:.1f}s")
        # Its replacement is submitted at once and waits for the node.
        replacement = await wait_for(lambda: _coming(client, settings), timeout_s=30, what="a replacement")
        assert replacement.id != first.id
        node_state = await asyncio.to_thread(fragile.node_state)
        assert node_state is not None and "DOWN" in node_state, node_state

        await asyncio.to_thread(fragile.start_slurmd)
        back_s = time.time()
        ready = await wait_for(lambda: _ready(client, settings, first.id), timeout_s=120, what="the replacement ready")
        assert ready.job_id != first.job_id
        print(f"slurmd back -> replacement ready {ready.timestamps[S.READY.value] - back_s:.1f}s")
        # Slurm did not revive the failed job, and its engine was killed when slurmd returned.
        jobs = {j.job_id: j for j in await active_jobs(settings)}
        assert int(first.job_id or 0) not in jobs
        assert await wait_for(lambda: _true(engine_pid(first.id) is None), timeout_s=60, what="old engine gone")
        assert all(j.state is JobState.RUNNING for j in jobs.values())
    finally:
        await run.close()
        await cancel_all(settings)


async def _ready(client: aioredis.Redis, settings: Settings, other_than: str | None) -> InstanceRecord | None:
    return next((r for r in await records(client, settings, S.READY) if r.id != other_than), None)


async def _coming(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    return next((r for r in await records(client, settings) if r.state in (S.PENDING, S.REQUESTED)), None)


async def _in_state(
    client: aioredis.Redis, settings: Settings, iid: str, state: InstanceState
) -> InstanceRecord | None:
    found = await record(client, settings, iid)
    return found if found is not None and found.state is state else None


# --- a SIGTERM before the walltime (what preemption sends first) ----------------------------------------


async def test_sigterm_before_the_end_drains_like_an_expiring_instance(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, client: aioredis.Redis, tmp_path: Path
) -> None:
    """Preemption starts with a SIGTERM to the job: it deregisters, drains and exits; no failure counted."""
    settings = local_settings(
        redis_url=redis_server.url, slurm_conf=slurm_cluster.conf_path, output_dir=tmp_path / "jobs"
    )
    await ModelStore(client, Keys(settings.redis.key_prefix)).put(steady("preempted"))
    run = RunningLauncher(settings)
    try:
        first = await wait_for(lambda: _ready(client, settings, None), timeout_s=120, what="a ready instance")
        slurm_cluster.run(["scancel", "--signal=TERM", "--batch", first.job_id or ""])
        gone = await wait_for(lambda: _in_state(client, settings, first.id, S.GONE), timeout_s=60, what="gone")
        assert gone.reason == "terminated by Slurm (scancel or preemption)", gone.reason
        assert S.FAILED.value not in gone.timestamps
        replacement = await wait_for(lambda: _ready(client, settings, first.id), timeout_s=120, what="replacement")
        assert replacement.job_id != first.job_id
        assert [r.state for r in await records(client, settings, S.FAILED)] == []
    finally:
        await run.close()
        await cancel_all(settings)
