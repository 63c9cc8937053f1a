"""The Files and Batches API through the official openai client, against a real gateway, Redis and engine simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import redis.asyncio as aioredis

from queue_gateway.batch_settings import BatchSettings
from queue_gateway.batch_worker import run_worker
from slurmless.localredis import LocalRedis
from slurmless.settings import RedisSettings, Settings
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
from warmpool.routing import Routing

TIMEOUT_S = 30.0


def batch_settings(tmp: Path, **kw: Any) -> BatchSettings:
    return BatchSettings(files_dir=tmp / "files", poll_s=0.05, line_lease_s=3.0, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with engine_sim("m") as s:
        yield s


@pytest.fixture
async def gw(redis_server: LocalRedis, tmp_path: Path) -> AsyncIterator[Served]:
    settings = gateway_settings(batch=batch_settings(tmp_path, max_active_per_tenant=2, file_max_lines=50))
    async with gateway(redis_server.url, settings) as served:
        yield served


def client(gw: Served, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S)


def jsonl(rows: list[object]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


def chat_line(i: int, model: str = "m") -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 3},
    }


async def wait_final(c: openai.AsyncOpenAI, bid: str, timeout_s: float = TIMEOUT_S) -> openai.types.Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await c.batches.retrieve(bid)
        if batch.status in ("completed", "expired", "cancelled", "failed"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        await asyncio.sleep(0.1)


async def rows(c: openai.AsyncOpenAI, fid: str | None) -> list[dict[str, Any]]:
    if fid is None:
        return []
    text = (await c.files.content(fid)).text
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def test_files_upload_list_retrieve_content_delete(redis_client: aioredis.Redis, gw: Served) -> None:
    key = await api_key(redis_client)
    other = await api_key(redis_client, tenant="chemistry")
    data = jsonl([chat_line(i) for i in range(3)])
    c, stranger = client(gw, key), client(gw, other)
    uploaded = await c.files.create(file=("in.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch" and uploaded.filename == "in.jsonl"
    assert (await c.files.retrieve(uploaded.id)).id == uploaded.id
    assert (await c.files.content(uploaded.id)).content == data
    assert [f.id for f in (await c.files.list()).data] == [uploaded.id]
    # Another tenant sees nothing of it.
    assert (await stranger.files.list()).data == []
    with pytest.raises(openai.NotFoundError):
        await stranger.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        await stranger.files.delete(uploaded.id)
    deleted = await c.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(uploaded.id)
    assert (await c.files.list()).data == []


async def test_upload_limits_and_bad_purpose(redis_client: aioredis.Redis, gw: Served, tmp_path: Path) -> None:
    key = await api_key(redis_client)
    c = client(gw, key)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await c.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="at most 50"):
        await c.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(51)])), purpose="batch")
    # Nothing was kept of the refused uploads.
    assert (await c.files.list()).data == []
    assert list((tmp_path / "files" / "files").iterdir()) == []


async def test_upload_stops_at_the_size_cap(
    redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = gateway_settings(batch=batch_settings(tmp_path, file_max_bytes=1000))
    key = await api_key(redis_client)
    async with gateway(redis_server.url, settings) as served:
        c = client(served, key)
        with pytest.raises(openai.APIStatusError) as caught:
            await c.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert caught.value.status_code == 413
        small = await c.files.create(file=("ok.jsonl", jsonl([chat_line(0)])), purpose="batch")
        assert small.bytes < 1000
    assert [p.name for p in (tmp_path / "files" / "files").iterdir()] == [small.id]


async def test_batch_runs_good_lines_and_reports_bad_ones(redis_client: aioredis.Redis, gw: Served, sim: Sim) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client)
    c = client(gw, key)
    lines: list[object] = [chat_line(i) for i in range(5)]
    lines[1]["body"]["priority"] = -100  # type: ignore[index]
    lines.insert(2, b"{not json")
    lines.append({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}})
    lines.append(chat_line(0))  # a custom_id used twice
    fid = (await c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")).id
    batch = await c.batches.create(
        input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "a"}
    )
    assert batch.status in ("validating", "in_progress") and batch.metadata == {"run": "a"}
    done = await wait_final(c, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 5, 3)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = await rows(c, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == [f"req-{i}" for i in range(5)]
    # Every line reached the engine with the batch priority (`line_priority`), a line's own value ignored.
    assert sim.engine.counters.priorities == {BatchSettings().line_priority: 5}
    for r in out:
        assert r["error"] is None and r["response"]["status_code"] == 200
        assert r["response"]["body"]["object"] == "chat.completion"
    errors = await rows(c, done.error_file_id)
    assert len(errors) == 3 and all(r["error"]["code"] == "invalid_request" for r in errors)
    assert {r["custom_id"] for r in errors} == {None, "wrong-url"}
    assert [b.id for b in (await c.batches.list()).data] == [batch.id]
    assert await settled(redis_client) == CLEAN
    assert not await redis_client.exists(f"sl:bpend:{batch.id}", f"sl:bdone:{batch.id}", f"sl:bown:{batch.id}")


async def test_creation_refusals(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "m")
    await register_model(redis_client, "private", visibility={"public": False, "tenants": ["chemistry"]})
    key = await api_key(redis_client)
    c = client(gw, key)

    async def upload(rows_: list[object]) -> str:
        return (await c.files.create(file=("in.jsonl", jsonl(rows_)), purpose="batch")).id

    good = await upload([chat_line(0)])
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await c.batches.create(input_file_id=good, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await c.batches.create(input_file_id=good, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    for model in ("nope", "private"):
        fid = await upload([chat_line(0, model)])
        with pytest.raises(openai.BadRequestError, match="does not exist"):
            await c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    mixed = await upload([chat_line(0), chat_line(1, "other")])
    with pytest.raises(openai.BadRequestError, match="one model"):
        await c.batches.create(input_file_id=mixed, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await c.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    # Nothing was created by the refusals.
    assert (await c.batches.list()).data == []
    # Only invalid lines: the batch fails with the reasons.
    bad = await upload([b"[1, 2]", b"nope"])
    failed = await c.batches.create(input_file_id=bad, endpoint="/v1/chat/completions", completion_window="24h")
    assert failed.status == "failed" and failed.errors is not None and len(failed.errors.data or []) == 2


async def test_tenant_batch_cap_cancel_and_visibility(redis_client: aioredis.Redis, gw: Served) -> None:
    await register_model(redis_client, "m")  # no instance: lines wait (a batch never cold-starts a model)
    key = await api_key(redis_client)
    other = await api_key(redis_client, tenant="chemistry")
    c = client(gw, key)
    fid = (await c.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(3)])), purpose="batch")).id
    kw: dict[str, Any] = {"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    first = await c.batches.create(**kw)
    second = await c.batches.create(**kw)
    with pytest.raises(openai.RateLimitError, match="batches in progress"):
        await c.batches.create(**kw)
    with pytest.raises(openai.NotFoundError):
        await client(gw, other).batches.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        await client(gw, other).batches.cancel(first.id)
    assert (await client(gw, other).batches.list()).data == []
    cancelling = await c.batches.cancel(first.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = await wait_final(c, first.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    errors = await rows(c, cancelled.error_file_id)
    assert sorted(r["custom_id"] for r in errors) == ["req-0", "req-1", "req-2"]
    assert {r["error"]["code"] for r in errors} == {"batch_cancelled"}
    # The cap counts active batches only: one slot is free again.
    third = await c.batches.create(**kw)
    assert {b.id for b in (await c.batches.list()).data} == {first.id, second.id, third.id}
    # No interactive demand was recorded for the model: batch lines never signal the launcher.
    assert not await redis_client.exists("sl:dem:m")
    assert await redis_client.exists("sl:bdem:m")


async def test_a_batch_worker_process_runs_lines_when_gateways_do_not(
    redis_server: LocalRedis, redis_client: aioredis.Redis, sim: Sim, tmp_path: Path
) -> None:
    await register_model(redis_client, "m")
    await add_instance(redis_client, "m", sim)
    key = await api_key(redis_client)
    gw_settings = gateway_settings(batch=batch_settings(tmp_path, runner=False))
    async with gateway(redis_server.url, gw_settings) as served:
        c = client(served, key)
        fid = (await c.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(20)])), purpose="batch")).id
        bid = (await c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")).id
        await asyncio.sleep(1.0)
        idle = await c.batches.retrieve(bid)
        assert idle.status == "validating"  # no runner anywhere: nothing moves
        stop = asyncio.Event()
        settings = Settings(redis=RedisSettings(url=redis_server.url), gateway=gw_settings)
        worker = asyncio.create_task(run_worker(settings, worker_id="bw-test", stop=stop))
        try:
            done = await wait_final(c, bid)
        finally:
            stop.set()
            await worker
        assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 20
        out = await rows(c, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(20))
    # The worker left cleanly: its lease is gone, no slot is booked.
    assert await redis_client.zscore("sl:gateways", "bw-test") is None
    assert await settled(redis_client) == CLEAN


async def test_a_batch_expires_at_the_end_of_its_window_with_partial_results(
    redis_server: LocalRedis, redis_client: aioredis.Redis, sim: Sim, tmp_path: Path
) -> None:
    await register_model(redis_client, "m")
    iid = await add_instance(redis_client, "m", sim, cap=2)
    key = await api_key(redis_client)
    # A 3 s window, one line at a time: some lines finish, then the instance goes away and the window ends.
    settings = gateway_settings(batch=batch_settings(tmp_path, completion_windows={"24h": 3.0}, max_in_flight=1))
    async with gateway(redis_server.url, settings) as served:
        c = client(served, key)
        fid = (await c.files.create(file=("in.jsonl", jsonl([chat_line(i) for i in range(40)])), purpose="batch")).id
        bid = (await c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")).id
        for _ in range(400):
            counts = (await c.batches.retrieve(bid)).request_counts
            if counts is not None and counts.completed >= 2:
                break
            await asyncio.sleep(0.05)
        await Routing(redis_client).deactivate("m", iid)
        done = await wait_final(c, bid)
        assert done.status == "expired" and done.expired_at is not None
        out, errors = await rows(c, done.output_file_id), await rows(c, done.error_file_id)
    assert done.request_counts is not None and done.request_counts.completed == len(out) >= 2
    assert {r["error"]["code"] for r in errors} == {"batch_expired"}
    assert sorted(r["custom_id"] for r in out + errors) == sorted(f"req-{i}" for i in range(40))


async def test_uploads_pass_the_request_body_limit_up_to_the_file_cap(
    redis_server: LocalRedis, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = gateway_settings(max_body_bytes=2048, batch=batch_settings(tmp_path, file_max_bytes=8000))
    key = await api_key(redis_client)
    async with gateway(redis_server.url, settings) as served:
        c = client(served, key)
        data = jsonl([chat_line(i) for i in range(40)])
        assert 2048 < len(data) < 8000
        assert (await c.files.create(file=("in.jsonl", data), purpose="batch")).bytes == len(data)
        with pytest.raises(openai.APIStatusError) as too_big:
            await c.files.create(file=("in.jsonl", data * 3), purpose="batch")
        assert too_big.value.status_code == 413
        # Other routes keep the request body limit.
        with pytest.raises(openai.APIStatusError) as chat:
            await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 3000}])
        assert chat.value.status_code == 413
