"""Clients that leave leave nothing behind; engines that fail before the first byte are retried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from slurmless.ports import free_port
from tests.fixtures.gateway_stack import (
    CLEAN,
    METRICS_AUTH,
    Served,
    Sim,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    register_model,
    settled,
)
from warmpool.routing import Routing


@pytest.fixture
async def gw(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url) as served:
        yield served


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_while_queued_removes_the_ticket(
    redis_client: aioredis.Redis, gw: Served, stream: bool
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    routing = Routing(redis_client)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
        task = asyncio.create_task(h.post("/v1/chat/completions", json=body))

        async def queued() -> bool:
            return await routing.queue_depth("m") == 1

        await eventually(queued)
        await asyncio.sleep(0.7)  # past the first progress comment for streams
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await settled(redis_client) == CLEAN


async def test_disconnect_mid_stream_releases_slot_and_aborts_engine_request(
    redis_client: aioredis.Redis, gw: Served
) -> None:
    async with engine_sim("m", inter_token_ms=20.0) as sim:
        await register_model(redis_client, "m")
        await add_instance(redis_client, "m", sim, cap=4)
        key = await api_key(redis_client)
        body = {"model": "m", "messages": [{"role": "user", "content": "tell"}], "stream": True, "max_tokens": 1000}
        auth = {"authorization": f"Bearer {key}"}
        async with (
            httpx.AsyncClient(base_url=gw.url, headers=auth, timeout=30) as h,
            h.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert resp.status_code == 200
            got = 0
            async for _ in resp.aiter_raw():
                got += 1
                if got >= 3:
                    break
            assert sim.engine.scheduler.running == 1
            assert list((await Routing(redis_client).inflight("m")).values()) == [1]
        # Leaving the block closed the connection mid-stream.

        async def engine_idle() -> bool:
            return sim.engine.scheduler.running == 0 and sim.engine.counters.finished["abort"] == 1

        await eventually(engine_idle)
        assert await settled(redis_client) == CLEAN
        assert list((await Routing(redis_client).inflight("m")).values()) == [0]
        async with httpx.AsyncClient() as plain:
            metrics = (await plain.get(sim.url + "/metrics")).text
        assert 'vllm:num_requests_running{engine="0",model_name="m"} 0.0' in metrics


async def test_unreachable_instance_is_retried_on_another_before_the_first_byte(
    redis_client: aioredis.Redis, gw: Served
) -> None:
    async with engine_sim("m") as live:
        await register_model(redis_client, "m")
        dead = Sim(f"http://127.0.0.1:{free_port()}", "k", live.engine)  # nothing listens there
        await add_instance(redis_client, "m", dead, iid="a-dead", cap=4)
        await add_instance(redis_client, "m", live, iid="b-live", cap=4)
        key = await api_key(redis_client)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
            ok = await h.post("/v1/chat/completions", json=body)
            assert ok.status_code == 200 and ok.json()["choices"]
            metrics = (await h.get("/metrics", headers=METRICS_AUTH)).text
        assert 'slurmless_gateway_upstream_retries_total{model="m"} 1.0' in metrics
        assert await settled(redis_client) == CLEAN
        # The instance that refused the connection is no longer routed to (the launcher re-routes it if
        # it proves healthy); the live one keeps serving.
        assert await Routing(redis_client).inflight("m") == {"b-live": 0}
