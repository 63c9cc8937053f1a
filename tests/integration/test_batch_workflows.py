"""Chunked and tribunal as batch-line methods: a batch whose endpoint is a workflow runs it per line,
every step on the slot its line took; results in OpenAI's output-file shape."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis

from queue_gateway.workflows import chunk_spans
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
from tests.integration.test_gateway_batches import batch_settings, client, jsonl, rows, wait_final
from warmpool.external import External
from warmpool.models import ModelStore
from warmpool.specs import ModelSpec


def _line(i: int, url: str, body: dict[str, object]) -> object:
    return {"custom_id": f"w-{i}", "method": "POST", "url": url, "body": body}


async def test_chunked_and_tribunal_batches_run_each_line_on_its_slot(
    redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await register_model(redis_client, "m")
    key = await api_key(redis_client)
    words = " ".join(f"w{i}" for i in range(100))
    chunked_body = {"model": "m", "input": words, "instruction": "Summarise:", "chunk_tokens": 30,
                    "overlap_tokens": 5, "max_tokens": 3}  # fmt: skip
    chunked_lines = [
        _line(0, "/v1/slurmless/chunked", chunked_body),
        _line(1, "/v1/slurmless/chunked", {**chunked_body, "combine": "reduce", "reduce_prompt": "Combine:"}),
        _line(2, "/v1/slurmless/chunked", {**chunked_body, "overlap_tokens": 30}),  # invalid: reported, not run
    ]
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    tribunal_lines = [
        _line(
            0,
            "/v1/slurmless/tribunal",
            {"generator": "m", "critic": "m", "rounds": 2, "max_tokens": 3, "messages": messages},
        ),
        _line(1, "/v1/slurmless/tribunal", {"generator": "m", "critic": "other", "messages": messages}),
    ]
    settings = gateway_settings(batch=batch_settings(tmp_path))
    async with engine_sim("m") as sim, gateway(redis_server.url, settings) as gw:
        await add_instance(redis_client, "m", sim)
        c = client(gw, key)
        f = await c.files.create(file=("c.jsonl", jsonl(chunked_lines)), purpose="batch")
        b = await c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/slurmless/chunked",  # type: ignore[arg-type]
            completion_window="24h",
        )
        done = await wait_final(c, b.id)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
        out = {r["custom_id"]: r for r in await rows(c, done.output_file_id)}
        errs = {r["custom_id"]: r for r in await rows(c, done.error_file_id)}
        assert set(out) == {"w-0", "w-1"} and set(errs) == {"w-2"}
        assert "overlap_tokens" in errs["w-2"]["error"]["message"]
        first = out["w-0"]["response"]
        assert first["status_code"] == 200 and first["body"]["object"] == "slurmless.chunked"
        spans = [(ch["start_token"], ch["end_token"]) for ch in first["body"]["chunks"]]
        assert spans == chunk_spans(100, 30, 5)
        assert out["w-1"]["response"]["body"]["combine"] == "reduce"
        # 4 chunk chats per line, and one reduce: every step went to the engine, none twice.
        assert sim.engine.counters.requests_started == 4 + 4 + 1

        f2 = await c.files.create(file=("t.jsonl", jsonl(tribunal_lines)), purpose="batch")
        b2 = await c.batches.create(
            input_file_id=f2.id,
            endpoint="/v1/slurmless/tribunal",  # type: ignore[arg-type]
            completion_window="24h",
        )
        done2 = await wait_final(c, b2.id)
        assert done2.status == "completed", done2
        out2 = await rows(c, done2.output_file_id)
        errs2 = await rows(c, done2.error_file_id)
        assert [r["custom_id"] for r in out2] == ["w-0"] and [r["custom_id"] for r in errs2] == ["w-1"]
        steps = out2[0]["response"]["body"]["steps"]
        assert [(s["round"], s["role"]) for s in steps] == [
            (0, "generate"), (1, "critique"), (1, "revise"), (2, "critique"), (2, "revise")
        ]  # fmt: skip
        assert "critic" in errs2[0]["error"]["message"]
        assert sim.engine.counters.requests_started == 9 + 5
    assert await settled(redis_client) == CLEAN


async def test_a_batch_for_an_external_model_is_refused(
    redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await ModelStore(redis_client).put(ModelSpec(name="ext", external=External(url="https://api.example.org/v1")))
    key = await api_key(redis_client)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "ext", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    async with gateway(redis_server.url, gateway_settings(batch=batch_settings(tmp_path))) as gw:
        c = client(gw, key)
        f = await c.files.create(file=("e.jsonl", jsonl([line])), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="external"):
            await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert (await c.batches.list()).data == []
