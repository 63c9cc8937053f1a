"""Chunked and tribunal workflows end to end: gateway, Redis and engine simulators; every step through the queue."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from queue_gateway.workflows import chunk_spans
from slurmless.localredis import LocalRedis
from tests.fixtures.gateway_stack import CLEAN, Served, add_instance, api_key, engine_sim, gateway, register_model
from tests.fixtures.gateway_stack import settled as settled_state


@pytest.fixture
async def gw(redis_server: LocalRedis) -> AsyncIterator[Served]:
    async with gateway(redis_server.url) as served:
        yield served


def test_chunk_spans_cover_the_input_with_overlap() -> None:
    assert chunk_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_spans(3, 4, 1) == [(0, 3)]
    assert chunk_spans(0, 4, 1) == []
    spans = chunk_spans(1000, 64, 16)
    assert spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(b[0] == a[1] - 16 for a, b in itertools.pairwise(spans))


async def test_chunked_splits_by_the_models_tokenizer_and_waits_for_a_cold_model(
    redis_client: aioredis.Redis, gw: Served
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    words = [f"w{i}" for i in range(100)]
    body = {
        "model": "m",
        "input": " ".join(words),
        "instruction": "Summarise:",
        "chunk_tokens": 30,
        "overlap_tokens": 5,
        "max_tokens": 4,
    }
    async with engine_sim("m") as sim, httpx.AsyncClient(timeout=30) as h:
        auth = {"authorization": f"Bearer {key}"}
        pending = asyncio.create_task(h.post(gw.url + "/v1/slurmless/chunked", json=body, headers=auth))
        await asyncio.sleep(1.0)
        assert not pending.done()  # held: the model is cold
        await add_instance(redis_client, "m", sim)
        r = await pending
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["object"] == "slurmless.chunked" and doc["input_tokens"] == 100
        spans = [(c["start_token"], c["end_token"]) for c in doc["chunks"]]
        assert spans == chunk_spans(100, 30, 5) == [(0, 30), (25, 55), (50, 80), (75, 100)]
        assert doc["output"] == "\n\n".join(c["output"] for c in doc["chunks"])
        # One chat per chunk, each given the instruction and its chunk's words back from /detokenize.
        counters = sim.engine.counters
        assert (counters.requests_started, counters.prompt_tokens) == (4, 4 * 1 + 30 + 30 + 30 + 25)

        reduced = await h.post(
            gw.url + "/v1/slurmless/chunked",
            json={**body, "combine": "reduce", "reduce_prompt": "Combine these summaries:"},
            headers=auth,
        )
        assert reduced.status_code == 200 and reduced.json()["output"]
        bad = await h.post(gw.url + "/v1/slurmless/chunked", json={**body, "overlap_tokens": 30}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "overlap_tokens"
    assert await settled_state(redis_client) == CLEAN


async def test_tribunal_generates_critiques_and_revises_with_two_models(
    redis_client: aioredis.Redis, gw: Served
) -> None:
    await register_model(redis_client, "a")
    await register_model(redis_client, "b")
    key = await api_key(redis_client)
    async with engine_sim("a") as sim_a, engine_sim("b") as sim_b, httpx.AsyncClient(timeout=30) as h:
        await add_instance(redis_client, "a", sim_a)
        await add_instance(redis_client, "b", sim_b)
        auth = {"authorization": f"Bearer {key}"}
        body = {
            "generator": "a",
            "critic": "b",
            "rounds": 2,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        }
        r = await h.post(gw.url + "/v1/slurmless/tribunal", json=body, headers=auth)
        assert r.status_code == 200, r.text
        doc = r.json()
        roles = [(s["round"], s["role"], s["model"]) for s in doc["steps"]]
        assert roles == [
            (0, "generate", "a"),
            (1, "critique", "b"),
            (1, "revise", "a"),
            (2, "critique", "b"),
            (2, "revise", "a"),
        ]
        assert doc["output"] == doc["steps"][-1]["content"]
        assert (sim_a.engine.counters.requests_started, sim_b.engine.counters.requests_started) == (3, 2)
        unknown = await h.post(gw.url + "/v1/slurmless/tribunal", json={**body, "critic": "nope"}, headers=auth)
        assert unknown.status_code == 404
        assert sim_a.engine.counters.requests_started == 3  # refused before any step ran
    assert await settled_state(redis_client) == CLEAN


async def test_a_workflow_counts_once_against_the_keys_limits(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "a")
    key = await api_key(redis_client, rpm_limit=1)
    body = {"generator": "a", "critic": "a", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    async with engine_sim("a") as sim, httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {key}"}) as h:
        await add_instance(redis_client, "a", sim)
        first = await h.post(gw.url + "/v1/slurmless/tribunal", json=body)
        second = await h.post(gw.url + "/v1/slurmless/tribunal", json=body)
    assert (first.status_code, second.status_code) == (200, 429)
