"""LoRA adapters share their base's instances: a request for an adapter cold-starts the base (with
runtime LoRA loading on), the launcher loads the adapter before routing, and an adapter registered
while the base runs is loaded within a tick. Real gateway, launcher, Slurm, Redis and engine simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from launcher.jobs import job_spec
from launcher.lora import LORA_JOB_ENV
from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env, local_settings, records, wait_for
from tests.fixtures.gateway_stack import gateway
from warmpool.apikeys import ApiKeyStore
from warmpool.instances import InstanceState
from warmpool.keys import Keys
from warmpool.models import ModelStore
from warmpool.specs import ModelKind, ModelSpec, Policy, Resources

pytestmark = pytest.mark.slurm


def base_model() -> ModelSpec:
    return ModelSpec(
        name="lbase",
        source="org/base",
        resources=Resources(gpus=1, cpus=1, mem_mb=256, time_limit_min=60),
        policy=Policy(max_replicas=1),
    )


def adapter(name: str) -> ModelSpec:
    return ModelSpec(name=name, source=f"/adapters/{name}", kind=ModelKind.LORA, base_model="lbase")


def test_job_of_a_lora_base_allows_runtime_loading(tmp_path: Path) -> None:
    settings = local_settings(redis_url="redis://x", slurm_conf=tmp_path / "slurm.conf", output_dir=tmp_path)
    kw = {
        "instance_id": "abc123",
        "settings": settings.launcher,
        "callback_url": "http://127.0.0.1:1",
        "callback_token": "t" * 32,
        "engine_api_key": "k" * 32,
        "partition": None,
        "qos": None,
    }
    lora = job_spec(base_model(), enable_lora=True, **kw)  # type: ignore[arg-type]
    plain = job_spec(base_model(), enable_lora=False, **kw)  # type: ignore[arg-type]
    assert lora.engine_args.get("--enable-lora") is True
    assert LORA_JOB_ENV.items() <= lora.engine_env.items()
    assert "--enable-lora" not in plain.engine_args
    assert not LORA_JOB_ENV.keys() & plain.engine_env.keys()


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path) as pair:
        yield pair


async def test_adapter_request_cold_starts_base_and_is_served_by_the_adapter(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    store = ModelStore(client, keys)
    await store.put(base_model())
    await store.put(adapter("tutor-lora"))
    launcher = RunningLauncher(settings)
    try:
        async with gateway(settings.redis.url, keys=keys) as gw:
            # The key lives under this test's own key prefix, where its gateway looks.
            key, _ = await ApiKeyStore(client, keys).create(tenant="physics", now_s=0.0)
            oai = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)
            answer = await oai.chat.completions.create(
                model="tutor-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert answer.model == "tutor-lora"
            ready = await records(client, settings, InstanceState.READY)
            assert [r.model for r in ready] == ["lbase"], "the adapter is served by its base's instance"
            assert ready[0].loaded_loras == ["tutor-lora"]

            # An adapter registered while the base runs is loaded within a tick, then served.
            await store.put(adapter("grader-lora"))
            iid = ready[0].id

            async def loaded() -> bool | None:
                current = next(r for r in await records(client, settings) if r.id == iid)
                return True if "grader-lora" in current.loaded_loras else None

            await wait_for(loaded, timeout_s=20, what="the second adapter loaded")
            second = await oai.chat.completions.create(
                model="grader-lora", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert second.model == "grader-lora"
            async with httpx.AsyncClient(timeout=5) as http:
                listed = await http.get(
                    f"{ready[0].url}/v1/models", headers={"Authorization": f"Bearer {ready[0].api_key}"}
                )
            engine_models = listed.json()
            assert {"tutor-lora", "grader-lora"} <= {m["id"] for m in engine_models["data"]}
            assert len([r for r in await records(client, settings) if r.state is not InstanceState.GONE]) == 1
    finally:
        await launcher.close()
