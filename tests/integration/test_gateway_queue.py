"""Queues through a real gateway: FIFO grants after a cold start, bounds, and the wait budgets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import (
    CLEAN,
    Served,
    Sim,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    register_model,
    settled,
)
from warmpool.phase import ModelPhase, Phase, PhaseBoard
from warmpool.routing import Routing

TIMEOUT_S = 60.0
N_STREAMS = 200


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("m") as s:
        yield s


@pytest.fixture
async def gw(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url) as served:
        yield served


async def wait_depth(redis: aioredis.Redis, model: str, depth: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await Routing(redis).queue_depth(model) < depth:
        assert time.monotonic() < deadline, f"queue of {model} never reached {depth}"
        await asyncio.sleep(0.005)


async def test_many_streams_to_a_cold_model_complete_in_fifo_order(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    aio = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S)
    finished: list[int] = []

    async def one(i: int) -> str:
        stream = await aio.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"request {i}"}], max_tokens=3, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        finished.append(i)
        return text

    tasks = []
    for i in range(N_STREAMS):
        tasks.append(asyncio.create_task(one(i)))
        await wait_depth(redis_client, "m", i + 1)  # arrival order is known
    # One instance with one slot: grants are strictly sequential, so completions show the grant order.
    await add_instance(redis_client, "m", sim, cap=1)
    texts = await asyncio.wait_for(asyncio.gather(*tasks), timeout=TIMEOUT_S)
    assert all(texts)
    assert finished == list(range(N_STREAMS))
    assert await settled(redis_client) == CLEAN
    assert list((await Routing(redis_client).inflight("m")).values()) == [0]
    await aio.close()


async def test_queue_full_while_warm_is_429_and_warm_budget_is_503(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    await register_model(redis_client, "m", policy={"queue_max": 1, "warm_wait_budget_s": 1.0})
    await add_instance(redis_client, "m", sim, cap=1)
    # Someone else holds the only slot.
    await Routing(redis_client).heartbeat("other-gw", now_s=time.time(), ttl_s=60)
    await Routing(redis_client).admit("m", "other-gw", "busy", now_s=time.time(), queue_max=10, global_max=10)
    key = await api_key(redis_client)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
        first = asyncio.create_task(h.post("/v1/chat/completions", json=body))
        await wait_depth(redis_client, "m", 1)
        second = await h.post("/v1/chat/completions", json=body)
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) >= 1
        assert second.json()["error"]["code"] == "queue_full"
        timed_out = await first
        assert timed_out.status_code == 503
        assert timed_out.json()["error"]["code"] == "wait_budget_exceeded"
        assert int(timed_out.headers["retry-after"]) >= 1
        assert timed_out.headers["x-slurmless-cold-start"] == "false"
    await Routing(redis_client).release("other-gw", "busy")
    assert await settled(redis_client) == CLEAN


async def test_cold_budget_and_queue_full_while_cold_are_503_with_eta(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "m", policy={"queue_max": 1, "cold_wait_budget_s": 1.0})
    await PhaseBoard(redis_client).set(
        "m", ModelPhase(phase=Phase.PENDING, slurm_reason="Resources", eta_s=time.time() + 120)
    )
    key = await api_key(redis_client)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
        first = asyncio.create_task(h.post("/v1/chat/completions", json=body | {"stream": False}))
        await wait_depth(redis_client, "m", 1)
        full = await h.post("/v1/chat/completions", json=body)
        assert full.status_code == 503
        assert 100 <= int(full.headers["retry-after"]) <= 121
        timed_out = await first
        assert timed_out.status_code == 503
        assert timed_out.headers["x-slurmless-cold-start"] == "true"
        assert 100 <= int(timed_out.headers["retry-after"]) <= 121
        # A held stream already got its headers: the refusal arrives as an SSE error event.
        async with h.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = (await resp.aread()).decode()
        assert resp.status_code == 200 and resp.headers["x-slurmless-held"] == "true"
        assert "phase=pending reason=Resources" in raw
        assert '"code":"wait_budget_exceeded"' in raw
    assert await settled(redis_client) == CLEAN


async def test_a_held_stream_reads_an_accounting_wait_in_words(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "m", policy={"cold_wait_budget_s": 1.0})
    wait = "waiting: QOS limit QOSMaxJobsPerUserLimit (qos small, account team-a)"
    await PhaseBoard(redis_client).set(
        "m", ModelPhase(phase=Phase.PENDING, slurm_reason="QOSMaxJobsPerUserLimit", detail=wait)
    )
    key = await api_key(redis_client)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        raw = (await resp.aread()).decode()
    assert resp.status_code == 200 and resp.headers["x-slurmless-held"] == "true"
    assert "phase=pending reason=QOSMaxJobsPerUserLimit" in raw
    assert f": slurmless {wait}\n" in raw
    assert await settled(redis_client) == CLEAN


async def test_first_request_for_a_cold_model_signals_demand_at_once(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("sl:demand")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as h:
        task = asyncio.create_task(h.post("/v1/chat/completions", json=body))
        msg = None
        deadline = time.monotonic() + 10
        while msg is None and time.monotonic() < deadline:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        assert msg is not None and msg["data"] == b"m"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert await settled(redis_client) == CLEAN
