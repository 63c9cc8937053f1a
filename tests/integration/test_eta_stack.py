"""An honest ETA through the whole stack: an engine slower than anything learnt is told as `eta=unknown`,
never `eta_s=0`; a registry update forgets what was learnt. Real Redis, Slurm, launcher, gateway, simulator."""

from __future__ import annotations

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
from testing.launcher import RunningLauncher, launcher_env, wait_for
from tests.fixtures.gateway_stack import gateway
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.learnt import LOAD_TIMES
from warmpool.models import ModelStore
from warmpool.redisio import awaited
from warmpool.specs import ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm

LOAD_TIME_S = 5.0


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path, load_time_s=LOAD_TIME_S) as pair:
        yield pair


def spec(source: str) -> ModelSpec:
    return ModelSpec(
        name="slow",
        source=source,
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(max_replicas=1),
    )


async def test_a_start_slower_than_learnt_says_unknown_and_an_update_forgets(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    store = ModelStore(client, keys)
    await store.put(spec("org/slow"))
    # Learnt from a much faster engine: 0.3 s loads.
    await awaited(client.hset(keys.model_stats("slow"), LOAD_TIMES, "[0.3, 0.3, 0.3, 0.3]"))
    key, _ = await ApiKeyStore(client, keys).create(tenant="physics", now_s=time.time())
    launcher = RunningLauncher(settings)
    try:
        async with gateway(settings.redis.url, keys=keys) as gw:
            body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            comments: list[str] = []
            async with (
                httpx.AsyncClient(timeout=120) as http,
                http.stream(
                    "POST", gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                ) as response,
            ):
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith(": slurmless queue"):
                        comments.append(line)
            loading = [c for c in comments if "phase=loading" in c]
            assert len(loading) >= 3, comments
            assert not [c for c in comments if "eta_s=0" in c], comments
            assert any("eta=unknown" in c for c in loading), comments

            # `slurmless status` reads the cold start the launcher recorded when the instance became ready.
            admin, _ = await ApiKeyStore(client, keys).create(tenant="ops", now_s=time.time(), admin=True)
            async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {admin}"}) as http:
                rows = (await http.get(gw.url + "/admin/v1/status")).json()["data"]
            row = next(r for r in rows if r["model"] == "slow")
            assert row["last_cold_start_s"] is not None and row["last_cold_start_s"] >= LOAD_TIME_S - 1

            # The slow load was learnt; changing the model's source forgets it within a tick.
            raw = await awaited(client.hget(keys.model_stats("slow"), LOAD_TIMES))
            assert raw is not None
            assert max(orjson.loads(raw)) >= LOAD_TIME_S - 1
            await store.put(spec("org/slow-v2"), replace=True)

            async def forgotten() -> bool:
                return await awaited(client.hget(keys.model_stats("slow"), LOAD_TIMES)) is None

            await wait_for(forgotten, timeout_s=10, what="the learnt load times dropped")
    finally:
        await launcher.close()
