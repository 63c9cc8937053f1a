"""Concurrency limits of keys and tenants hold in async mode too; polls do not re-read prompts; results are capped."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import (
    CLEAN,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    gateway_settings,
    register_model,
    settled,
)
from warmpool.tenants import TenantSpec, TenantStore

BODY = {"model": "m", "messages": [{"role": "user", "content": "later please"}], "max_tokens": 5}
ASYNC = {"prefer": "respond-async"}


def client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)


async def _command_calls(redis: aioredis.Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


async def test_async_requests_hold_the_keys_concurrency_slot_until_done(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client, concurrency_limit=1)
    async with gateway(redis_server.url) as gw, client(gw.url, key) as h:
        # The model is cold: an accepted async request stays unfinished, and must keep its slot.
        codes = [(await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)).status_code for _ in range(5)]
        assert codes == [202, 429, 429, 429, 429]
        sync = await h.post("/v1/chat/completions", json=BODY)
        assert sync.status_code == 429
        async with engine_sim("m") as sim:
            await add_instance(redis_client, "m", sim)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                again = await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)
                if again.status_code == 202:
                    break
                await asyncio.sleep(0.1)
            assert again.status_code == 202, "the slot came back once the first async request was done"
            done = await h.get(f"/v1/async/{again.json()['id']}", params={"wait_s": 10})
            assert done.status_code == 200
    assert await settled(redis_client) == CLEAN


async def test_tenant_quota_limits_all_its_keys_together(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await TenantStore(redis_client).create(TenantSpec(name="physics", max_concurrent_requests=2))
    await register_model(redis_client, "m")
    keys = [await api_key(redis_client) for _ in range(3)]
    other = await api_key(redis_client, tenant="chemistry")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "stream": True}
    async with (
        engine_sim("m", first_token_delay_ms=1500.0) as sim,
        gateway(redis_server.url) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as h,
    ):
        await add_instance(redis_client, "m", sim)

        async def run(k: str) -> int:
            auth = {"authorization": f"Bearer {k}"}
            async with h.stream("POST", "/v1/chat/completions", json=body, headers=auth) as r:
                await r.aread()
                return r.status_code

        first = [asyncio.create_task(run(k)) for k in keys[:2]]
        await asyncio.sleep(0.3)
        refused = await h.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {keys[2]}"})
        assert refused.status_code == 429
        assert "tenant physics" in refused.json()["error"]["message"]
        assert await run(other) == 200, "another tenant is not limited by physics's quota"
        assert await asyncio.gather(*first) == [200, 200]
        assert await run(keys[2]) == 200
    assert await settled(redis_client) == CLEAN


async def test_long_polls_read_neither_prompt_nor_whole_record(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    async with gateway(redis_server.url) as gw, client(gw.url, key) as h:
        rid = (await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)).json()["id"]
        await asyncio.sleep(0.5)  # the runner read the record once to start the request
        before = await _command_calls(redis_client, "hgetall")
        pending = await h.get(f"/v1/async/{rid}", params={"wait_s": 1.2})
        assert pending.status_code == 202
        assert await _command_calls(redis_client, "hgetall") == before


async def test_an_async_answer_over_the_cap_is_stored_as_an_error(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    async with (
        engine_sim("m") as sim,
        gateway(redis_server.url, gateway_settings(async_max_result_bytes=500)) as gw,
        client(gw.url, key) as h,
    ):
        await add_instance(redis_client, "m", sim)
        rid = (await h.post("/v1/chat/completions", json={**BODY, "max_tokens": 400}, headers=ASYNC)).json()["id"]
        done = await h.get(f"/v1/async/{rid}", params={"wait_s": 10})
        assert done.status_code == 502, len(done.content)
        assert done.json()["error"]["code"] == "result_too_large"
        ok = (await h.post("/v1/chat/completions", json={**BODY, "max_tokens": 1}, headers=ASYNC)).json()["id"]
        assert (await h.get(f"/v1/async/{ok}", params={"wait_s": 10})).status_code == 200
    assert await settled(redis_client) == CLEAN
