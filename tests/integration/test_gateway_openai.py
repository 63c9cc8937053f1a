"""The official openai client against a real gateway and engine simulator: warm and cold starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from slurmless.localredis import LocalRedis
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

TIMEOUT_S = 30.0


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("chat-model") as s:
        yield s


@pytest.fixture
async def gw(redis_server: LocalRedis, redis_client: aioredis.Redis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url) as served:
        yield served


def clients(gw: Served, key: str) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    base = gw.url + "/v1"
    return (
        openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=TIMEOUT_S),
        openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=TIMEOUT_S),
    )


async def test_warm_model_sync_and_async_streaming_and_not(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "chat", served_name="chat-model", aliases=["chatty"])
    await add_instance(redis_client, "chat", sim, cap=8)
    key = await api_key(redis_client)
    sync, aio = clients(gw, key)
    msgs: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]

    def sync_calls() -> tuple[str, str, str]:
        full = sync.chat.completions.create(model="chat-model", messages=msgs, max_tokens=8)
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in sync.chat.completions.create(model="chatty", messages=msgs, max_tokens=8, stream=True)
            if c.choices
        )
        raw = sync.chat.completions.with_raw_response.create(model="chat-model", messages=msgs, max_tokens=4)
        return full.choices[0].message.content or "", streamed, raw.headers["x-slurmless-cold-start"]

    full, streamed, cold = await asyncio.to_thread(sync_calls)
    assert full and full == streamed, "the same prompt gives the same text streamed or not"
    assert cold == "false"

    done = await aio.completions.create(model="chat-model", prompt="once upon", max_tokens=5)
    assert done.model == "chat-model" and done.usage is not None
    chunks = [
        c async for c in await aio.completions.create(model="chatty", prompt="once upon", max_tokens=5, stream=True)
    ]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
    emb = await aio.embeddings.create(model="chat-model", input=["a", "b"])
    assert len(emb.data) == 2
    await aio.close()
    sync.close()
    assert await settled(redis_client) == CLEAN
    assert sim.engine.scheduler.running == 0


async def test_cold_start_during_request_with_progress_comments(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    await register_model(redis_client, "chat", served_name="chat-model")
    key = await api_key(redis_client)
    sync, aio = clients(gw, key)
    msgs: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "wake up"}]

    async def launcher() -> None:
        await asyncio.sleep(1.5)
        await add_instance(redis_client, "chat", sim, cap=4)

    def sync_stream() -> str:
        stream = sync.chat.completions.create(model="chat-model", messages=msgs, max_tokens=6, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # A raw look at the held stream: SSE comments first, then the model's events.
    async def raw_stream() -> tuple[httpx.Headers, str]:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT_S) as h,
            h.stream(
                "POST",
                gw.url + "/v1/chat/completions",
                json={"model": "chat-model", "messages": msgs, "max_tokens": 6, "stream": True},
                headers={"authorization": f"Bearer {key}"},
            ) as resp,
        ):
            return resp.headers, (await resp.aread()).decode()

    def sync_plain() -> str:
        return (
            sync.chat.completions.create(model="chat-model", messages=msgs, max_tokens=6).choices[0].message.content
            or ""
        )

    async def aio_stream() -> str:
        stream = await aio.chat.completions.create(model="chat-model", messages=msgs, max_tokens=6, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def aio_plain() -> openai.types.chat.ChatCompletion:
        raw = await aio.chat.completions.with_raw_response.create(model="chat-model", messages=msgs, max_tokens=6)
        assert raw.headers["x-slurmless-cold-start"] == "true"
        assert int(raw.headers["x-slurmless-queue-wait-ms"]) >= 1000
        return raw.parse()

    _, sync_text, sync_full, aio_text, (headers, raw), plain = await asyncio.gather(
        launcher(),
        asyncio.to_thread(sync_stream),
        asyncio.to_thread(sync_plain),
        aio_stream(),
        raw_stream(),
        aio_plain(),
    )
    assert sync_text and sync_text == plain.choices[0].message.content == sync_full == aio_text
    assert headers["x-slurmless-cold-start"] == "true" and headers["x-slurmless-held"] == "true"
    assert raw.startswith(": slurmless queue position=")
    granted_ms = int(raw.split(": slurmless granted cold_start=true queue_wait_ms=")[1].split()[0])
    assert 1000 <= granted_ms < 1000 + int(TIMEOUT_S * 1000)
    assert int(headers["x-slurmless-queue-wait-ms"]) <= granted_ms
    assert raw.rstrip().endswith("data: [DONE]")
    await aio.close()
    sync.close()
    assert await settled(redis_client) == CLEAN


async def test_errors_are_openai_shaped(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "chat", served_name="chat-model")
    await register_model(redis_client, "secret", visibility={"public": False}, owner_tenant="chemistry")
    await add_instance(redis_client, "chat", sim)
    key = await api_key(redis_client)
    sync, aio = clients(gw, key)
    msgs: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError) as nf:
        await aio.chat.completions.create(model="nope", messages=msgs)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        await aio.chat.completions.create(model="secret", messages=msgs)
    with pytest.raises(openai.AuthenticationError):
        await clients(gw, "sk-sl-bad-key")[1].chat.completions.create(model="chat-model", messages=msgs)
    with pytest.raises(openai.BadRequestError) as br:
        await aio.chat.completions.create(model="chat-model", messages=[])
    assert br.value.param == "messages"
    # The engine's own refusal (context too long) comes back with its status, in OpenAI's shape.
    with pytest.raises(openai.BadRequestError):
        await aio.completions.create(model="chat-model", prompt="x", max_tokens=100_000)
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}) as h:
        bad = await h.post("/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
        missing = await h.post("/v1/completions", json={"prompt": "x"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
        assert (await h.get("/v1/nowhere")).status_code == 404
        assert missing.headers["x-slurmless-cold-start"] == "false"
    await aio.close()
    sync.close()


async def test_a_client_priority_cannot_jump_the_engine_queue(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    # Engines schedule by vLLM's `priority` (lower first) and batch lines carry a larger one: a tenant's own
    # value is refused before it reaches the engine (0, the default, passes).
    await register_model(redis_client, "chat", served_name="chat-model")
    await add_instance(redis_client, "chat", sim)
    key = await api_key(redis_client)
    async with httpx.AsyncClient(base_url=gw.url, headers={"authorization": f"Bearer {key}"}) as h:
        for path, body in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}),
            ("/v1/completions", {"prompt": "x", "max_tokens": 2}),
        ):
            for priority in (-100, 5, True, "0"):
                refused = await h.post(path, json={"model": "chat-model", "priority": priority, **body})
                assert refused.status_code == 400, (path, priority)
                error = refused.json()["error"]
                assert (error["type"], error["param"]) == ("invalid_request_error", "priority")
            assert sim.engine.counters.priorities == ({} if path.endswith("chat/completions") else {0: 1})
            ok = await h.post(path, json={"model": "chat-model", "priority": 0, **body})
            assert ok.status_code == 200
    assert sim.engine.counters.priorities == {0: 2}
    assert await settled(redis_client) == CLEAN


async def test_models_listing_has_state_and_respects_visibility(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    await register_model(redis_client, "chat", served_name="chat-model")
    await register_model(redis_client, "cold-one")
    await register_model(redis_client, "ours", visibility={"public": False}, owner_tenant="physics")
    await register_model(redis_client, "shared", visibility={"public": False, "tenants": ["physics"]})
    await register_model(redis_client, "theirs", visibility={"public": False}, owner_tenant="chemistry")
    await add_instance(redis_client, "chat", sim)
    key = await api_key(redis_client, tenant="physics")
    _, aio = clients(gw, key)
    page = await aio.models.list()
    states = {m.id: m.model_extra["slurmless"]["state"] for m in page.data if m.model_extra}
    assert states == {"chat-model": "warm", "cold-one": "cold", "ours": "cold", "shared": "cold"}
    with pytest.raises(openai.NotFoundError):
        await aio.models.retrieve("theirs")
    await aio.close()


async def test_health_readiness_and_metrics(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "chat", served_name="chat-model")
    await add_instance(redis_client, "chat", sim)
    key = await api_key(redis_client)
    async with httpx.AsyncClient(base_url=gw.url) as h:
        assert (await h.get("/healthz")).status_code == 200
        assert (await h.get("/readyz")).json()["status"] == "ready"
        ok = await h.post(
            "/v1/chat/completions",
            json={"model": "chat-model", "messages": [{"role": "user", "content": "m"}], "max_tokens": 2},
            headers={"authorization": f"Bearer {key}"},
        )
        assert ok.status_code == 200
        anonymous = await h.get("/metrics")
        assert anonymous.status_code == 401 and "chat" not in anonymous.text
        text = (await h.get("/metrics", headers=METRICS_AUTH)).text
    assert 'slurmless_gateway_requests_total{model="chat",path="/v1/chat/completions",status="200"} 1.0' in text
    assert 'slurmless_gateway_queue_depth{model="chat"} 0.0' in text
    assert "slurmless_gateway_time_to_first_byte_seconds_count" in text
