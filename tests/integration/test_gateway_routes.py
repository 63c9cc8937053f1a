"""Every inference route the engine serves goes through the queue: Responses, rerank, score, tokenize, transcriptions.

Each answers through the gateway what the engine answers directly, is held through a cold start
(the Responses stream's progress is SSE comments its clients ignore), counted, and limited per key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

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
    gateway_settings,
    register_model,
    settled,
)

VOLATILE = frozenset({"id", "created", "created_at"})
JSON_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/responses", {"input": "say something", "max_output_tokens": 6}),
    ("/v1/rerank", {"query": "red apple", "documents": ["a red apple", "blue sky", "apple pie"], "top_n": 2}),
    ("/v1/score", {"text_1": "red apple", "text_2": ["a red apple", "blue sky"]}),
    ("/tokenize", {"prompt": "one two three"}),
    ("/detokenize", {"tokens": [1001, 1002]}),
]


def _stable(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _stable(v) for k, v in doc.items() if k not in VOLATILE}
    if isinstance(doc, list):
        return [_stable(v) for v in doc]
    return doc


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("m", inter_token_ms=5) as s:
        yield s


@pytest.fixture
async def gw(redis_server: LocalRedis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url, gateway_settings(metrics_public=True)) as served:
        yield served


@pytest.mark.parametrize(("path", "body"), JSON_ROUTES)
async def test_json_routes_answer_as_the_engine_does(
    redis_client: aioredis.Redis, gw: Served, sim: Sim, path: str, body: dict[str, Any]
) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client)
    async with httpx.AsyncClient(timeout=30) as h:
        via = await h.post(gw.url + path, json={"model": "m", **body}, headers={"authorization": f"Bearer {key}"})
        direct = await h.post(
            sim.url + path, json={"model": "m", **body}, headers={"authorization": f"Bearer {sim.api_key}"}
        )
        assert via.status_code == direct.status_code == 200, via.text
        assert _stable(via.json()) == _stable(direct.json())
        assert via.headers["x-slurmless-cold-start"] == "false"
        unknown = await h.post(
            gw.url + path, json={"model": "nope", **body}, headers={"authorization": f"Bearer {key}"}
        )
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        metrics = (await h.get(gw.url + "/metrics")).text
    assert f'slurmless_gateway_requests_total{{model="m",path="{path}",status="200"}} 1.0' in metrics
    assert await settled(redis_client) == CLEAN


async def test_a_responses_stream_is_held_through_a_cold_start(
    redis_client: aioredis.Redis, gw: Served, sim: Sim
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    body = {"model": "m", "input": "hello there", "stream": True, "max_output_tokens": 5}

    async def raw_stream() -> tuple[httpx.Headers, list[str]]:
        async with (
            httpx.AsyncClient(timeout=30) as h,
            h.stream("POST", gw.url + "/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}) as r,
        ):
            return r.headers, [line async for line in r.aiter_lines() if line]

    async def sdk_stream() -> tuple[list[str], openai.types.responses.Response]:
        kinds: list[str] = []
        final = None
        async with await client.responses.create(model="m", input="hello there", stream=True, max_output_tokens=5) as s:
            async for event in s:
                kinds.append(event.type)
                if event.type == "response.completed":
                    final = event.response
        assert final is not None
        return kinds, final

    raw = asyncio.create_task(raw_stream())
    sdk = asyncio.create_task(sdk_stream())
    await asyncio.sleep(1.5)
    assert not raw.done() and not sdk.done()
    await add_instance(redis_client, "m", sim)
    (headers, lines), (kinds, final) = await raw, await sdk
    assert headers["x-slurmless-held"] == "true"
    assert any(line.startswith(": slurmless queue") for line in lines)  # progress while cold, as SSE comments
    assert lines[-1].startswith("data: ") and "response.completed" in lines[-1]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage is not None and kinds.count("response.output_text.delta") == final.usage.output_tokens
    assert final.output_text
    assert await settled(redis_client) == CLEAN


async def test_transcriptions_go_through_the_queue(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client)
    audio = bytes(range(256)) * 20
    via = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    direct = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key=sim.api_key, max_retries=0, timeout=30)
    got = await via.audio.transcriptions.create(model="m", file=("a.wav", audio), language="en")
    want = await direct.audio.transcriptions.create(model="m", file=("a.wav", audio), language="en")
    assert got.text == want.text and got.text
    with pytest.raises(openai.NotFoundError):
        await via.audio.transcriptions.create(model="nope", file=("a.wav", audio))
    async with httpx.AsyncClient(timeout=30) as h:
        missing = await h.post(
            gw.url + "/v1/audio/transcriptions", data={"model": "m"}, headers={"authorization": f"Bearer {key}"},
            files={"other": ("x", b"y")},
        )  # fmt: skip
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert await settled(redis_client) == CLEAN


async def test_new_routes_count_against_a_keys_limits(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client, rpm_limit=2)
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {key}"}) as h:
        codes = [
            (await h.post(gw.url + "/tokenize", json={"model": "m", "prompt": "a b"})).status_code,
            (await h.post(gw.url + "/v1/score", json={"model": "m", "text_1": "a", "text_2": "b"})).status_code,
            (await h.post(gw.url + "/v1/rerank", json={"model": "m", "query": "a", "documents": ["b"]})).status_code,
        ]
    assert codes == [200, 200, 429]
