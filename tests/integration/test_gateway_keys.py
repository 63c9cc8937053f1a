"""API keys through the gateway: the short cache (a revoked key stops within its TTL) and per-key limits."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis.asyncio as aioredis

from queue_gateway.auth import KeyCache
from queue_gateway.errors import Unauthorized
from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import CLEAN, add_instance, engine_sim, gateway, register_model, settled
from warmpool.apikeys import ApiKeyStore


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


async def test_revoked_key_stops_working_once_the_cache_entry_expires(redis_client: aioredis.Redis) -> None:
    store = ApiKeyStore(redis_client)
    plain, record = await store.create(tenant="physics", now_s=1.0)
    clock = Clock()
    cache = KeyCache(store, ttl_s=5.0, clock=clock)
    assert (await cache.authenticate(f"Bearer {plain}".encode())).tenant == "physics"
    await store.revoke(record.key_id)
    clock.now_s += 4.9
    assert (await cache.authenticate(f"Bearer {plain}".encode())).key_id == record.key_id, "still cached"
    clock.now_s += 0.2
    with pytest.raises(Unauthorized):
        await cache.authenticate(f"Bearer {plain}".encode())
    with pytest.raises(Unauthorized):
        await cache.authenticate(None)
    with pytest.raises(Unauthorized):
        await cache.authenticate(b"Basic abc")


async def test_per_key_rpm_and_concurrency_limits(redis_server: LocalRedis, redis_client: aioredis.Redis) -> None:
    await register_model(redis_client, "m")
    store = ApiKeyStore(redis_client)
    rpm_key, _ = await store.create(tenant="physics", now_s=time.time(), rpm_limit=2)
    conc_key, _ = await store.create(tenant="physics", now_s=time.time(), concurrency_limit=1)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}
    async with (
        engine_sim("m", inter_token_ms=5.0) as sim,
        gateway(redis_server.url) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as h,
    ):
        await add_instance(redis_client, "m", sim)
        auth = {"authorization": f"Bearer {rpm_key}"}
        codes = [(await h.post("/v1/chat/completions", json=body, headers=auth)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        auth = {"authorization": f"Bearer {conc_key}"}
        async with h.stream("POST", "/v1/chat/completions", json=body, headers=auth) as first:
            assert first.status_code == 200
            second = await h.post("/v1/chat/completions", json=body, headers=auth)
            assert second.status_code == 429 and "retry-after" in second.headers
            assert second.json()["error"]["code"] == "rate_limit_exceeded"
            await first.aread()
        await asyncio.sleep(0)  # the first request's booking is released just after its last byte
        deadline = time.monotonic() + 5
        while (await h.post("/v1/chat/completions", json=body, headers=auth)).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    assert await settled(redis_client) == CLEAN
