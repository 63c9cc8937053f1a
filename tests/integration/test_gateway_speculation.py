"""Speculative forwarding: a warm request goes to the engine while its admit is on the way to Redis,
and the engine's answer is used only if the admit gave that instance the slot."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import (
    CLEAN,
    METRICS_AUTH,
    Served,
    add_instance,
    api_key,
    engine_sim,
    gateway,
    register_model,
    settled,
)
from warmpool.routing import AdmitOutcome, Routing

TIMEOUT_S = 30.0


async def speculative_sends(gw: Served, model: str) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(gw.url + "/metrics", headers=METRICS_AUTH)).text
    name = "slurmless_gateway_speculative_sends_total"
    pattern = name + r'\{model="' + re.escape(model) + r'",outcome="(\w+)"\} (\S+)'
    return {outcome: float(value) for outcome, value in re.findall(pattern, text)}


def ask(client: openai.AsyncOpenAI, model: str) -> asyncio.Task[str]:
    async def one() -> str:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        return answer.choices[0].message.content or ""

    return asyncio.get_running_loop().create_task(one())


async def test_a_warm_request_is_sent_before_its_admit_answers(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, "spec")
    key = await api_key(redis_client)
    async with gateway(redis_server.url) as gw, engine_sim("spec") as one, engine_sim("spec") as two:
        await add_instance(redis_client, "spec", one, cap=64)
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S)
        for _ in range(3):
            assert await ask(client, "spec")
        # The first admit taught the gateway where the next request would go; the next two went at once.
        assert await speculative_sends(gw, "spec") == {"used": 2.0}
        assert one.engine.counters.requests_started == 3
        assert one.engine.counters.finished["abort"] == 0
        # With two ready instances the least-loaded choice is Redis's: once an admit said so (the first
        # request after the change may still go ahead, to either), nothing is sent ahead any more.
        await add_instance(redis_client, "spec", two, cap=64)
        for _ in range(3):
            assert await ask(client, "spec")
        assert sum((await speculative_sends(gw, "spec")).values()) == 3.0
    assert await settled(redis_client) == CLEAN


async def test_a_speculative_request_the_admit_queues_is_aborted_at_the_engine(
    redis_server: LocalRedis, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("queue_gateway.dispatch.SPECULATION_HINT_S", 60.0)  # the hint outlives slow machines
    await register_model(redis_client, "busy")
    key = await api_key(redis_client)
    routing = Routing(redis_client)
    async with gateway(redis_server.url) as gw, engine_sim("busy", first_token_delay_ms=200) as sim:
        await add_instance(redis_client, "busy", sim, cap=4)
        client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S)
        assert await ask(client, "busy")  # load 1 of 4: the next request may go ahead
        # Another gateway fills the instance meanwhile.
        for i in range(4):
            adm = await routing.admit("busy", "other-gw", f"other-{i}", now_s=0.0, queue_max=10, global_max=100)
            assert adm.outcome is AdmitOutcome.SLOT
        request = ask(client, "busy")
        for _ in range(100):
            if sim.engine.counters.finished["abort"] == 1:
                break
            await asyncio.sleep(0.02)
        assert sim.engine.counters.finished["abort"] == 1, "the engine should have seen the request aborted"
        assert await speculative_sends(gw, "busy") == {"abandoned": 1.0}
        assert not request.done(), "the request should wait in the queue for a slot"
        await routing.release("other-gw", "other-0")  # a slot frees: the queued ticket is granted
        assert await asyncio.wait_for(request, timeout=TIMEOUT_S)
        for i in range(1, 4):
            await routing.release("other-gw", f"other-{i}")
    assert sim.engine.counters.requests_started == 3
    assert await settled(redis_client) == CLEAN
