"""Registering a model asks the launcher whether the cluster can ever run it: real Slurm (`sinfo`,
`sbatch --test-only`), Redis, launcher and gateway. A spec no node can hold is refused with the
reason and nothing is stored; without a launcher to ask, it is accepted with a warning."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from slurm.localcluster import LocalCluster
from slurmless.localredis import LocalRedis
from slurmless.settings import Settings
from testing.launcher import RunningLauncher, launcher_env, wait_for
from tests.fixtures.gateway_stack import gateway
from warmpool.apikeys import ApiKeyStore
from warmpool.keys import Keys
from warmpool.models import ModelStore

pytestmark = pytest.mark.slurm


@pytest.fixture
async def env(
    slurm_cluster: LocalCluster, redis_server: LocalRedis, tmp_path: Path
) -> AsyncIterator[tuple[Settings, aioredis.Redis]]:
    async with launcher_env(slurm_cluster, redis_server, tmp_path) as pair:
        yield pair


async def _admin(client: aioredis.Redis, keys: Keys) -> dict[str, str]:
    key, _ = await ApiKeyStore(client, keys).create(tenant="ops", now_s=time.time(), admin=True)
    return {"authorization": f"Bearer {key}"}


def _root(settings: Settings) -> Settings:
    """The deployment's settings as the gateway reads them: hub ids allowed (the simulator ignores sources)."""
    return settings.model_copy(update={"registry": settings.registry.model_copy(update={"allow_hub_ids": True})})


def _model(name: str, **resources: object) -> dict[str, object]:
    return {"name": name, "source": "org/sim", "resources": resources}


async def test_registration_is_checked_against_the_cluster(
    env: tuple[Settings, aioredis.Redis], slurm_cluster: LocalCluster
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    headers = await _admin(client, keys)
    store = ModelStore(client, keys)
    launcher = RunningLauncher(settings)
    try:
        await wait_for(lambda: client.get(keys.leader), timeout_s=20, what="a leading launcher")
        async with (
            gateway(settings.redis.url, keys=keys, root_settings=_root(settings)) as gw,
            httpx.AsyncClient(timeout=60) as http,
        ):
            # The default estimate (16,000 MB) on the test node (8,000 MB): refused, nothing stored.
            too_big = await http.post(gw.url + "/admin/v1/models", json=_model("my-ft", gpus=1), headers=headers)
            assert too_big.status_code == 400, too_big.text
            error = too_big.json()["error"]
            assert error["code"] == "model_unrunnable" and error["param"] == "resources", error
            assert "16000 MB memory" in error["message"], error
            assert f"largest: {slurm_cluster.memory_mb} MB" in error["message"], error
            assert await store.get("my-ft") is None

            # A partition the cluster does not have: refused by the nodes' partitions.
            nowhere = _model("nowhere", gpus=1, cpus=1, mem_mb=256, partitions=["nope"])
            refused = await http.post(gw.url + "/admin/v1/models", json=nowhere, headers=headers)
            assert refused.status_code == 400 and "no node is in partition(s) nope" in refused.text, refused.text

            # A node feature nobody has: only `sbatch --test-only` tells.
            featureless = _model("featureless", gpus=1, cpus=1, mem_mb=256, constraint="nosuchfeature")
            refused = await http.post(gw.url + "/admin/v1/models", json=featureless, headers=headers)
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]["message"]
            assert "sbatch --test-only refused" in message and "feature" in message.lower(), message
            assert await store.get("featureless") is None

            fits = await http.post(
                gw.url + "/admin/v1/models", json=_model("fits", gpus=1, cpus=1, mem_mb=256), headers=headers
            )
            assert fits.status_code == 201, fits.text
            assert fits.json()["warnings"] == []
            assert await store.get("fits") is not None
    finally:
        await launcher.close()


async def test_without_a_launcher_the_model_is_accepted_with_a_warning(
    env: tuple[Settings, aioredis.Redis],
) -> None:
    settings, client = env
    keys = Keys(settings.redis.key_prefix)
    headers = await _admin(client, keys)
    async with (
        gateway(settings.redis.url, keys=keys, root_settings=_root(settings)) as gw,
        httpx.AsyncClient(timeout=60) as http,
    ):
        t0 = time.monotonic()
        response = await http.post(gw.url + "/admin/v1/models", json=_model("later", gpus=1), headers=headers)
        took_s = time.monotonic() - t0
    assert response.status_code == 201, response.text
    [warning] = response.json()["warnings"]
    assert "not checked against the cluster" in warning and "no launcher" in warning, warning
    assert took_s < 5, took_s  # nobody listening is known at once: no wait for the check's timeout
    assert await ModelStore(client, keys).get("later") is not None
