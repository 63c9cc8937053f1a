"""Requests waiting for a model that cannot start are told at once, with the reason, not at the end of
their cold-start budget. Real Slurm (which refuses a memory request no node can hold), Redis, launcher
and gateway."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env
from tests.fixtures.gateway_stack import gateway, gateway_settings
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

COLD_BUDGET_S = 900.0
"""The default cold-start budget: a request that waits it out takes 15 minutes."""
TOLD_WITHIN_S = 20.0


def spec(name: str, *, mem_mb: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        source="org/sim",
        resources=Resources(gpus=1, cpus=1, mem_mb=mem_mb, time_limit_min=60),
        policy=Policy(max_replicas=1, cold_wait_budget_s=COLD_BUDGET_S),
    )


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(
        slurm_cluster,
        redis_server,
        tmp_path,
        engine_command=[sys.executable, "-c", "raise SystemExit(3)"],
        max_failures=2,
        failure_backoff_s=0.5,
    ) as pair:
        yield pair


async def _key(client: aioredis.Redis, keys: Keys) -> str:
    key, _ = await ApiKeyStore(client, keys).create(tenant="physics", now_s=time.time())
    return key


def _body(model: str, *, stream: bool) -> dict[str, object]:
    return {"model": model, "stream": stream, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_job_slurm_refuses_answers_waiting_requests_at_once(env: tuple[Settings, aioredis.Redis]) -> None:
    """16,000 MB on a node of 8,000 MB: sbatch refuses the job and the held request gets a 503 saying why."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(spec("too-big", mem_mb=16_000))
    key = await _key(client, keys)
    launcher = RunningLauncher(settings)
    try:
        async with (
            gateway(settings.redis.url, gateway_settings(), keys=keys) as gw,
            httpx.AsyncClient(timeout=COLD_BUDGET_S) as http,
        ):
            t0 = time.monotonic()
            response = await http.post(
                gw.url + "/v1/chat/completions",
                json=_body("too-big", stream=False),
                headers={"authorization": f"Bearer {key}"},
            )
            waited_s = time.monotonic() - t0
    finally:
        await launcher.close()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_failed", error
    assert "Memory specification can not be satisfied" in error["message"], error
    assert response.headers.get("retry-after"), response.headers
    assert waited_s < TOLD_WITHIN_S, waited_s


async def test_a_model_that_becomes_broken_ends_held_streams_with_the_reason(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    """Its engine exits at every start: after `max_failures` the model is broken and the held stream,
    which was getting progress comments, ends with a `failed` comment and an error event."""
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    await ModelStore(client, keys).put(spec("crashy", mem_mb=256))
    key = await _key(client, keys)
    launcher = RunningLauncher(settings)
    comments: list[str] = []
    events: list[dict[str, object]] = []
    try:
        async with (
            gateway(settings.redis.url, gateway_settings(), keys=keys) as gw,
            httpx.AsyncClient(timeout=COLD_BUDGET_S) as http,
            http.stream(
                "POST",
                gw.url + "/v1/chat/completions",
                json=_body("crashy", stream=True),
                headers={"authorization": f"Bearer {key}"},
            ) as response,
        ):
            t0 = time.monotonic()
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith(": slurmless"):
                    comments.append(line)
                elif line.startswith("data: "):
                    events.append(orjson.loads(line[6:]))
            waited_s = time.monotonic() - t0
    finally:
        await launcher.close()
    assert any(c.startswith(": slurmless queue") for c in comments), comments
    assert comments[-1].startswith(": slurmless failed "), comments
    assert "engine exited with code 3" in comments[-1], comments
    [event] = events
    assert event["error"]["code"] == "model_failed", event  # type: ignore[index]
    assert "2 failed starts in a row" in event["error"]["message"], event  # type: ignore[index]
    assert waited_s < 120, waited_s
