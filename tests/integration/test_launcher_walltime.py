"""Walltime renewal on the real local cluster: a 2-minute job is replaced with no moment unserved.

The launcher submits a successor when the time left drops below p95 queue wait + p95 load + the
job's signal lead + Slurm's signal slack (60 s) + a margin; once the successor is ready it takes
the routing, and the old instance drains: the launcher cancels its job once the engine reports no
request in flight (at most `drain_grace_s`). With a 2-minute limit that lead exceeds the job's
life, so each instance is renewed soon after it is ready: a chain, as it should be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import (
    RunningLauncher,
    active_jobs,
    launcher_env,
    record,
    records,
    wait_for,
)
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.routing import Routing
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

INTER_TOKEN_MS = 100
STREAM_TOKENS = 120  # about 12 s: long enough to span the hand-over, short enough for the job's drain


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(
        slurm_cluster,
        redis_server,
        tmp_path / "jobs",
        renew_margin_s=5.0,
        drain_grace_s=30.0,
        engine_env={"ENGINESIM_INTER_TOKEN_MS": str(INTER_TOKEN_MS)},
    ) as pair:
        yield pair


async def _stream(url: str, api_key: str | None, model: str) -> tuple[int, bool, float]:
    """Stream one completion straight from an engine: (chunks, whether [DONE] arrived, when it ended)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "prompt": "hello", "max_tokens": STREAM_TOKENS, "stream": True, "ignore_eos": True}
    chunks, done = 0, False
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client,
        client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks += 1
    return chunks, done, time.time()


async def test_two_minute_job_is_renewed_without_a_moment_unserved(env: tuple[Settings, aioredis.Redis]) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    spec = ModelSpec(
        name="short",
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=2),
        policy=Policy(min_replicas=1, max_replicas=1),
    )
    await ModelStore(client, keys).put(spec)
    routing = Routing(client, keys)
    run = RunningLauncher(settings)
    stream: asyncio.Task[tuple[int, bool, float]] | None = None
    try:
        first: InstanceRecord = await wait_for(
            lambda: _first_ready(client, settings), timeout_s=120, what="the first ready instance"
        )
        assert first.job_id is not None
        samples: list[tuple[float, frozenset[str]]] = []
        successor: InstanceRecord | None = None
        deadline = time.monotonic() + 240  # the job's 2 minutes plus Slurm's time-limit check and drain
        while True:
            samples.append((time.time(), frozenset(await routing.inflight("short"))))
            if successor is None:
                successor = next((r for r in await records(client, settings) if r.successor_of == first.id), None)
                if successor is not None:
                    # A stream in flight on the old instance while routing moves to the successor.
                    stream = asyncio.create_task(_stream(first.url or "", first.api_key, spec.client_name))
            jobs = {j.job_id for j in await active_jobs(settings)}
            old = await record(client, settings, first.id)
            assert old is not None
            if int(first.job_id) not in jobs and old.state is InstanceState.GONE:
                break
            assert time.monotonic() < deadline, f"first job still there: {old.state} {old.reason}"
            await asyncio.sleep(0.2)
        samples.append((time.time(), frozenset(await routing.inflight("short"))))

        empty = [t for t, ready in samples if not ready]
        assert not empty, f"no ready instance at {len(empty)} of {len(samples)} samples"
        assert successor is not None
        renewed = await record(client, settings, successor.id)
        # With a 2-minute limit the successor is itself renewed soon after: it may be draining by now.
        assert renewed is not None and InstanceState.READY.value in renewed.timestamps
        assert renewed.job_id is not None and renewed.job_id != first.job_id
        assert old.reason == f"renewed by {renewed.id}"
        assert first.id not in samples[-1][1]
        # The successor was submitted before the first job's end, with time to spare.
        assert first.end_time_s is not None
        assert renewed.created_s < first.end_time_s - settings.launcher.signal_lead_s
        assert stream is not None
        chunks, done, ended_s = await asyncio.wait_for(stream, timeout=60)
        assert done and chunks >= STREAM_TOKENS, (chunks, done)
        # It was still streaming when the old instance started draining, and was let finish.
        assert old.timestamps[InstanceState.DRAINING.value] < ended_s
        print(
            f"\nsamples {len(samples)} over {samples[-1][0] - samples[0][0]:.0f}s, all non-empty; "
            f"successor submitted {first.end_time_s - renewed.created_s:.0f}s before the first job's end"
        )
    finally:
        if stream is not None and not stream.done():
            stream.cancel()
        await run.close()


async def _first_ready(client: aioredis.Redis, settings: Settings) -> InstanceRecord | None:
    ready = await records(client, settings, InstanceState.READY)
    return ready[0] if ready and ready[0].end_time_s is not None else None
