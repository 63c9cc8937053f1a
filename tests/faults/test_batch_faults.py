"""Faults during a batch: a gateway running batch lines is killed, an engine is killed. No line may be lost or doubled.

Each line's result must appear exactly once in the output file, and every line must complete: the
lines a dead runner or engine had in flight are run again (after their lease lapses, or at once).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.faults.client import stream_chat
from tests.faults.results import record
from tests.faults.stack import SHORT_GATEWAY_LEASE_TTL_S, FaultStack, engine_pids

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

COLD_TIMEOUT_S = 90.0
LINES = 240
MAX_TOKENS = 12
"""About 0.25 s a line at the suite's 20 ms a token."""
BATCH_TIMEOUT_S = 150.0


def _input(model: str) -> bytes:
    rows = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": MAX_TOKENS},
        }
        for i in range(LINES)
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


async def _start_batch(fs: FaultStack, http: httpx.AsyncClient, model: str) -> tuple[openai.AsyncOpenAI, str]:
    warm = await stream_chat(http, fs.url, fs.key, model, max_tokens=2, timeout_s=COLD_TIMEOUT_S)
    assert warm.ok, warm
    c = openai.AsyncOpenAI(base_url=fs.url + "/v1", api_key=fs.key, max_retries=2, timeout=30)
    fid = (await c.files.create(file=("in.jsonl", _input(model)), purpose="batch")).id
    batch = await c.batches.create(input_file_id=fid, endpoint="/v1/chat/completions", completion_window="24h")
    return c, batch.id


async def _completed(c: openai.AsyncOpenAI, bid: str) -> int:
    counts = (await c.batches.retrieve(bid)).request_counts
    return 0 if counts is None else counts.completed


async def _until(what: str, timeout_s: float, check: Any) -> None:
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < timeout_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _exactly_once(c: openai.AsyncOpenAI, bid: str) -> tuple[openai.types.Batch, int]:
    t0 = time.monotonic()
    while (batch := await c.batches.retrieve(bid)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() - t0 < BATCH_TIMEOUT_S, f"batch still {batch.status}: {batch.request_counts}"
        await asyncio.sleep(0.5)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    out = [orjson.loads(x) for x in (await c.files.content(batch.output_file_id)).content.splitlines()]
    ids = [r["custom_id"] for r in out]
    assert len(ids) == len(set(ids)), "a line's result appears twice"
    assert sorted(ids) == sorted(f"line-{i}" for i in range(LINES)), "a line's result is missing"
    assert all(r["response"]["status_code"] == 200 for r in out)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (LINES, 0)
    assert batch.error_file_id is None
    return batch, len(out)


async def _no_slots_left(fs: FaultStack, model: str) -> None:
    left = await fs.settled_leftovers([model], timeout_s=SHORT_GATEWAY_LEASE_TTL_S * 5)
    assert not left, f"slots left booked: {left}"


@pytest.mark.timeout(300)
async def test_kill_9_gateway_running_batch_lines(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("batchgw", keepalive_s=300)
    async with fs.redis() as r:
        before = {m.decode() for m in await r.zrange(fs.keys.gateways, 0, -1)}
    gw = fs.spawn_gateway(SLURMLESS_GATEWAY__LEASE_TTL_S=str(SHORT_GATEWAY_LEASE_TTL_S))

    async def second_gateway_id() -> bool:
        async with fs.redis() as r:
            return len({m.decode() for m in await r.zrange(fs.keys.gateways, 0, -1)} - before) == 1

    await _until("the second gateway's lease", 30, second_gateway_id)
    async with fs.redis() as r:
        (victim,) = {m.decode() for m in await r.zrange(fs.keys.gateways, 0, -1)} - before
    c, bid = await _start_batch(fs, http, model)

    async def victim_runs_lines() -> bool:
        async with fs.redis() as r:
            return int(await r.hlen(fs.keys.gw_slots(victim))) > 0 and await _completed(c, bid) >= 10  # type: ignore[misc]

    await _until(f"the second gateway running lines of {bid}", 60, victim_runs_lines)
    done_at_kill = await _completed(c, bid)
    t0 = time.monotonic()
    gw.kill9()
    _, lines = await _exactly_once(c, bid)
    await _no_slots_left(fs, model)
    record(
        "kill -9 of a gateway running batch lines",
        "its lines in flight run again elsewhere after their lease; each line's result exactly once",
        f"{done_at_kill}/{LINES} done at the kill; batch completed, {lines} results, no duplicate, none missing",
        time.monotonic() - t0,
    )


@pytest.mark.timeout(300)
async def test_kill_9_engine_mid_batch(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("batcheng", keepalive_s=300)
    c, bid = await _start_batch(fs, http, model)

    async def some_done() -> bool:
        return await _completed(c, bid) >= 20

    await _until("20 lines done", 60, some_done)
    done_at_kill = await _completed(c, bid)
    pids = engine_pids(model)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    # A batch never starts an instance by itself: the next interactive request brings the model back.
    again = await stream_chat(http, fs.url, fs.key, model, max_tokens=2, timeout_s=COLD_TIMEOUT_S)
    assert again.ok, again
    _, lines = await _exactly_once(c, bid)
    await _no_slots_left(fs, model)
    record(
        "kill -9 of the engine mid-batch",
        "lines in flight retried once an instance is back; each line's result exactly once",
        f"{done_at_kill}/{LINES} done at the kill; batch completed, {lines} results, no duplicate, none missing",
        time.monotonic() - t0,
    )
