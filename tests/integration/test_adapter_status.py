"""An adapter's request waits in its base model's queue, and the admin status counts it there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.settings import MetricsSettings, Settings
from tests.fixtures.gateway_stack import METRICS_TOKEN, Served, api_key, gateway, gateway_settings, register_model

ADMIN_TOKEN = "adapter-status-admin-token-0123"


@pytest.fixture
async def gw(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[Served]:
    settings = gateway_settings(cold_wait_budget_s=20.0)
    root = Settings(gateway=settings, admin_token=ADMIN_TOKEN, metrics=MetricsSettings(token=METRICS_TOKEN))
    async with gateway(redis_server.url, settings, root_settings=root) as served:
        yield served


async def test_a_queued_adapter_request_shows_in_the_adapters_status(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "base")
    await register_model(redis_client, "tutor", kind="lora", base_model="base", served_name="tutor")
    key = await api_key(redis_client)
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        # No instance runs: the request waits (cold) in the queue the gateway keeps for it.
        waiting = asyncio.create_task(
            http.post(
                "/v1/completions",
                json={"model": "tutor", "prompt": "x", "max_tokens": 1},
                headers={"authorization": f"Bearer {key}"},
            )
        )
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 10
        rows: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            status = await http.get("/admin/v1/status", headers=admin)
            rows = {r["model"]: r for r in status.json()["data"]}
            if rows["base"]["queue_depth"] == 1:
                break
            await asyncio.sleep(0.05)
        assert rows["base"]["queue_depth"] == 1, rows
        assert rows["tutor"]["queue_depth"] == 1, rows["tutor"]
        shown = await http.get("/admin/v1/models/tutor", headers=admin)
        assert shown.json()["status"]["queue_depth"] == 1
        waiting.cancel()
