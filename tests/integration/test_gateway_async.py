"""Async mode: 202 and an id, then poll or long-poll; requests and results survive a gateway restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import (
    CLEAN,
    Sim,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    register_model,
    settled,
)
from warmpool.async_requests import AsyncRequests

BODY = {"model": "m", "messages": [{"role": "user", "content": "later please"}], "max_tokens": 5}
ASYNC = {"prefer": "respond-async"}


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("m") as s:
        yield s


def client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30)


async def test_submit_poll_long_poll_and_result(
    redis_server: LocalRedis, redis_client: aioredis.Redis, sim: Sim
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    other = await api_key(redis_client, tenant="chemistry")
    async with gateway(redis_server.url) as gw, client(gw.url, key) as h:
        sub = await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)
        assert sub.status_code == 202
        rid = sub.json()["id"]
        assert sub.headers["location"] == f"/v1/async/{rid}"
        pending = await h.get(f"/v1/async/{rid}")
        assert pending.status_code == 202 and pending.json()["status"] in ("queued", "in_progress")
        async with client(gw.url, other) as stranger:
            assert (await stranger.get(f"/v1/async/{rid}")).status_code == 404
        long_poll = asyncio.create_task(h.get(f"/v1/async/{rid}", params={"wait_s": 20}))
        await asyncio.sleep(0.5)
        await add_instance(redis_client, "m", sim)
        done = await long_poll
        assert done.status_code == 200
        assert done.json()["object"] == "chat.completion"
        assert done.headers["x-slurmless-cold-start"] == "true"
        # Fetching again gives the same stored answer; the prompt is gone from Redis.
        assert (await h.get(f"/v1/async/{rid}")).json() == done.json()
        record = await AsyncRequests(redis_client).get(rid)
        assert record is not None and record.body is None
        assert 0 < await redis_client.ttl(f"sl:async:{rid}") <= 3600
    assert await settled(redis_client) == CLEAN


async def test_async_request_survives_a_gateway_restart(
    redis_server: LocalRedis, redis_client: aioredis.Redis, sim: Sim
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    async with gateway(redis_server.url) as first, client(first.url, key) as h:
        pending_rid = (await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)).json()["id"]
    # The first gateway stopped cleanly while the request was queued: it handed it back.
    assert await AsyncRequests(redis_client).pending() == 1
    await add_instance(redis_client, "m", sim)
    async with gateway(redis_server.url) as second, client(second.url, key) as h:
        done = await h.get(f"/v1/async/{pending_rid}", params={"wait_s": 20})
        assert done.status_code == 200 and done.json()["choices"]
        finished_rid = (await h.post("/v1/chat/completions", json=BODY, headers=ASYNC)).json()["id"]
        assert (await h.get(f"/v1/async/{finished_rid}", params={"wait_s": 20})).status_code == 200
    async with gateway(redis_server.url) as third, client(third.url, key) as h:
        again = await h.get(f"/v1/async/{finished_rid}")
        assert again.status_code == 200 and again.json()["choices"]
    assert await settled(redis_client) == CLEAN
