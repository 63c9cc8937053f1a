"""The launcher's /metrics, scraped over HTTP from a running launcher on the local cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env, records, wait_for
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    # A long backoff: the unplaceable model fails once and is not retried during the test.
    async with launcher_env(slurm_cluster, redis_server, tmp_path / "jobs", failure_backoff_s=600.0) as pair:
        yield pair


def spec(name: str, partitions: list[str]) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60, partitions=partitions),
        policy=Policy(min_replicas=1, max_replicas=1),
    )


async def scrape(url: str) -> list[Sample]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        resp = await http.get(f"{url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(resp.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


async def test_metrics_show_cold_start_phases_instances_by_state_and_slurm_commands(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(spec("good", []))
    # sbatch refuses a partition that does not exist: a Slurm command error and a failed instance.
    await ModelStore(client, keys).put(spec("nowhere", ["nosuchpartition"]))
    run = RunningLauncher(settings)
    try:
        await wait_for(lambda: _in(client, settings, "good", InstanceState.READY), timeout_s=120, what="good ready")
        await wait_for(lambda: _in(client, settings, "nowhere", InstanceState.FAILED), timeout_s=60, what="fail")
        await wait_for(lambda: _published(run), timeout_s=30, what="a tick after both")
        samples = await scrape(run.service.callback_url)

        for phase in ("queue_wait", "start", "load"):
            count = value(samples, "slurmless_cold_start_phase_seconds_count", model="good", phase=phase)
            assert count is not None and count >= 1, phase
            assert value(samples, "slurmless_cold_start_phase_seconds_bucket", model="good", phase=phase, le="+Inf")
        assert value(samples, "slurmless_instances", model="good", state="ready") == 1.0
        assert value(samples, "slurmless_instances", model="nowhere", state="failed") == 1.0
        for command in ("squeue", "sbatch"):
            count = value(samples, "slurmless_slurm_command_seconds_count", command=command)
            assert count is not None and count >= 1, command
        errors = value(samples, "slurmless_slurm_command_errors_total", command="sbatch")
        assert errors is not None and errors >= 1
        assert value(samples, "slurmless_slurm_command_errors_total", command="squeue") is None
        failures = value(samples, "slurmless_instance_failures_total", model="nowhere", kind="submission failed")
        assert failures == 1.0
        submitted = value(samples, "slurmless_submissions_total", model="good", why="scale")
        assert submitted == 1.0
        assert value(samples, "slurmless_launcher_leader") == 1.0
        ticks = value(samples, "slurmless_launcher_ticks_total")
        assert ticks is not None and ticks >= 1
    finally:
        await run.close()


async def _in(client: aioredis.Redis, settings: Settings, model: str, state: InstanceState) -> InstanceRecord | None:
    return next((r for r in await records(client, settings, state) if r.model == model), None)


async def _published(run: RunningLauncher) -> bool:
    samples = await scrape(run.service.callback_url)
    return value(samples, "slurmless_instances", model="nowhere", state="failed") == 1.0 and (
        value(samples, "slurmless_instances", model="good", state="ready") == 1.0
    )
