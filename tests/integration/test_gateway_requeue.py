"""Nothing lost that could be saved: requests an engine took but had not answered when it was killed
(kill -9 of a real engine process) go back to the head of the model's queue and are served by the
replacement; a stream that had sent tokens ends with an SSE error event (at-most-once)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import httpx
import orjson
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import CLEAN, api_key, gateway, register_model, settled
from tests.integration.test_enginesim_server import SimProcess, start_sim, stop_sim, wait_healthy
from warmpool.instance_store import InstanceStore
from warmpool.instances import InstanceRecord, InstanceState
from warmpool.routing import Routing

MODEL = "fragile"


def engine(api_key: str, *extra: str) -> SimProcess:
    """A real engine process that runs one request at a time (`--max-num-seqs 1`): the others wait
    inside it with nothing sent yet, as they do in a busy vLLM."""
    sim = start_sim(
        [
            "--served-model-name", MODEL, "--api-key", api_key, "--max-num-seqs", "1",
            "--sim-load-time-s", "0", "--sim-inter-token-ms", "20", *extra,
        ]
    )  # fmt: skip
    wait_healthy(sim)
    return sim


async def route_to(redis: aioredis.Redis, sim: SimProcess, api_key: str, *, cap: int) -> str:
    iid = f"{MODEL}-{uuid.uuid4().hex[:6]}"
    host, port = sim.base_url.removeprefix("http://").split(":")
    record = InstanceRecord(id=iid, model=MODEL, state=InstanceState.READY, host=host, port=int(port), api_key=api_key)
    await InstanceStore(redis).put(record)
    await Routing(redis).activate(MODEL, iid, cap=cap)
    return iid


async def chat(
    http: httpx.AsyncClient, url: str, key: str, tag: str, *, stream: bool, tokens: int
) -> dict[str, object]:
    """One chat completion; what the client saw, and when it ended."""
    body = {"model": MODEL, "stream": stream, "max_tokens": tokens, "messages": [{"role": "user", "content": tag}]}
    seen: dict[str, object] = {"tag": tag, "chunks": 0, "done": False, "error": None}
    async with http.stream(
        "POST", url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as r:
        seen["status"] = r.status_code
        if not stream:
            raw = await r.aread()
            doc = orjson.loads(raw)
            seen["error"] = doc.get("error")
            seen["done"] = "choices" in doc
        else:
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    seen["done"] = True
                elif line.startswith("data: "):
                    event = orjson.loads(line[6:])
                    if "error" in event:
                        seen["error"] = event["error"]
                    else:
                        seen["chunks"] = int(seen["chunks"]) + 1  # type: ignore[call-overload]
    seen["ended"] = time.monotonic()
    return seen


async def test_requests_without_output_survive_a_killed_engine_ahead_of_later_ones(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    await register_model(redis_client, MODEL)
    key = await api_key(redis_client)
    first_key, second_key = "inst-first", "inst-second"
    first = engine(first_key)
    second: SimProcess | None = None
    try:
        first_iid = await route_to(redis_client, first, first_key, cap=3)
        routing = Routing(redis_client)
        async with gateway(redis_server.url) as gw, httpx.AsyncClient(timeout=60) as http:
            # A streams tokens; B (streamed) and C (not) wait inside the engine with no output; D waits
            # in the gateway's queue (the instance's 3 slots are taken).
            a = asyncio.create_task(chat(http, gw.url, key, "a", stream=True, tokens=2000))
            for _ in range(200):
                if (await routing.inflight(MODEL)).get(first_iid) == 1:
                    break
                await asyncio.sleep(0.02)
            b = asyncio.create_task(chat(http, gw.url, key, "b", stream=True, tokens=5))
            c = asyncio.create_task(chat(http, gw.url, key, "c", stream=False, tokens=5))
            for _ in range(200):
                if (await routing.inflight(MODEL)).get(first_iid) == 3:
                    break
                await asyncio.sleep(0.02)
            d = asyncio.create_task(chat(http, gw.url, key, "d", stream=True, tokens=5))
            for _ in range(200):
                if await routing.queue_depth(MODEL) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await routing.queue_depth(MODEL) == 1
            await asyncio.sleep(0.3)  # A has streamed some tokens

            os.kill(first.proc.pid, signal.SIGKILL)
            cut = await asyncio.wait_for(a, timeout=10)
            assert cut["status"] == 200 and int(cut["chunks"]) > 0, cut  # type: ignore[call-overload]
            assert cut["error"] is not None and not cut["done"], cut
            assert cut["error"]["code"] == "upstream_failed"  # type: ignore[index]
            # B and C went back to the queue, ahead of D; none of them failed.
            for _ in range(200):
                if await routing.queue_depth(MODEL) == 3:
                    break
                await asyncio.sleep(0.02)
            assert await routing.queue_depth(MODEL) == 3
            assert not (b.done() or c.done() or d.done())

            # The replacement takes one request at a time: the order they end is the order served.
            second = engine(second_key)
            await route_to(redis_client, second, second_key, cap=1)
            served = await asyncio.wait_for(asyncio.gather(b, c, d), timeout=30)
        for outcome in served:
            assert outcome["status"] == 200 and outcome["done"] and outcome["error"] is None, outcome
        order = [o["tag"] for o in sorted(served, key=lambda o: float(o["ended"]))]  # type: ignore[arg-type]
        assert order[-1] == "d", order
        assert await settled(redis_client) == CLEAN
    finally:
        stop_sim(first.proc)
        if second is not None:
            stop_sim(second.proc)


async def test_a_stream_whose_engine_dies_before_its_first_token_is_served_by_the_replacement(
    redis_server: LocalRedis, redis_client: aioredis.Redis
) -> None:
    """The engine dies while it works on the only request (a slow first token): the client never sees
    an error, its stream carries the replacement's answer."""
    await register_model(redis_client, MODEL)
    key = await api_key(redis_client)
    first = engine("inst-one", "--sim-first-token-delay-ms", "20000")
    second: SimProcess | None = None
    try:
        first_iid = await route_to(redis_client, first, "inst-one", cap=2)
        routing = Routing(redis_client)
        async with gateway(redis_server.url) as gw, httpx.AsyncClient(timeout=60) as http:
            waiting = asyncio.create_task(chat(http, gw.url, key, "slow", stream=True, tokens=3))
            for _ in range(200):
                if (await routing.inflight(MODEL)).get(first_iid) == 1:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            os.kill(first.proc.pid, signal.SIGKILL)
            await asyncio.sleep(0.5)
            assert not waiting.done(), waiting.result()
            second = engine("inst-two")
            await route_to(redis_client, second, "inst-two", cap=2)
            outcome = await asyncio.wait_for(waiting, timeout=30)
        assert outcome["status"] == 200 and outcome["done"] and outcome["error"] is None, outcome
        assert int(outcome["chunks"]) >= 3, outcome  # type: ignore[call-overload]
        assert await settled(redis_client) == CLEAN
    finally:
        stop_sim(first.proc)
        if second is not None:
            stop_sim(second.proc)
