"""Nothing lost that could be saved, on the whole stack: requests an engine had taken but not yet
answered when it was killed (kill -9) are served by its replacement; a request for a model whose job
Slurm refuses is answered at once with Slurm's reason.

Delivery: at-least-once for a request that has produced no output (it is sent again), at-most-once
for a stream that has (it ends with an SSE error event).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from testing.launcher import wait_for
from tests.faults.client import StreamOutcome, stream_chat
from tests.faults.results import record
from tests.faults.stack import CLUSTER_MEMORY_MB, FaultStack, engine_pids
from warmpool.routing import Routing

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

COLD_TIMEOUT_S = 90.0


async def _inflight(fs: FaultStack, model: str, iid: str) -> int:
    async with fs.redis() as r:
        return (await Routing(r, fs.keys).inflight(model)).get(iid, 0)


async def _chat(http: httpx.AsyncClient, fs: FaultStack, model: str) -> tuple[int, dict[str, object]]:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post(
        fs.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {fs.key}"}
    )
    return response.status_code, response.json()


@pytest.mark.timeout(240)
async def test_kill_9_engine_with_requests_not_yet_answered(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    # One sequence at a time: requests beyond the first wait inside the engine with nothing sent yet,
    # as they do in a busy vLLM.
    model = await fs.register("unanswered", engine_args={"--max-num-seqs": 1})
    first = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=COLD_TIMEOUT_S)
    assert first.ok, first
    [inst] = await fs.ready(model)
    started = asyncio.Event()
    long = asyncio.create_task(
        stream_chat(http, fs.url, fs.key, model, max_tokens=2000, timeout_s=150, started=started)
    )
    await asyncio.wait_for(started.wait(), timeout=30)
    waiting_stream = asyncio.create_task(stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=150))
    waiting_plain = asyncio.create_task(_chat(http, fs, model))
    await wait_for(lambda: _has(fs, model, inst.id, 3), timeout_s=30, what="both requests inside the engine")
    [pid] = engine_pids(model)

    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    cut = await asyncio.wait_for(long, timeout=30)
    assert not cut.done and cut.chunks >= 5 and cut.kind == "event upstream_failed", cut
    served: StreamOutcome = await asyncio.wait_for(waiting_stream, timeout=150)
    status, answer = await asyncio.wait_for(waiting_plain, timeout=150)
    recovery_s = time.monotonic() - t0
    assert served.ok, served
    assert status == 200 and "choices" in answer, answer
    replacement = [r for r in await fs.ready(model) if r.id != inst.id]
    assert replacement, "served by the replacement"
    record(
        "kill -9 of the engine with requests it had not answered yet",
        "the stream under way ends with an SSE error; requests without output are served by the replacement",
        f"stream cut ({cut.kind}, {cut.chunks} chunks); waiting stream served ({served.chunks} chunks) and "
        f"non-streamed request 200, after the replacement's cold start",
        recovery_s,
    )


async def _has(fs: FaultStack, model: str, iid: str, count: int) -> bool:
    return await _inflight(fs, model, iid) >= count


@pytest.mark.timeout(120)
async def test_request_for_a_model_whose_job_slurm_refuses(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    # The default estimate of an unknown checkpoint on a node that cannot hold it.
    model = await fs.register("too-big", mem_mb=2 * CLUSTER_MEMORY_MB, cold_wait_budget_s=900.0)
    t0 = time.monotonic()
    plain_status, plain = await _chat(http, fs, model)
    plain_s = time.monotonic() - t0
    streamed = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=60)
    assert plain_status == 503, plain
    error = plain["error"]
    assert isinstance(error, dict) and error["code"] == "model_failed", error
    assert "Memory specification can not be satisfied" in str(error["message"]), error
    assert plain_s < 20, plain_s
    assert streamed.kind in ("http 503 model_failed", "event model_failed"), streamed
    record(
        "a model whose job Slurm refuses (memory no node has)",
        "held requests answered 503 with Slurm's reason at once, not after the 900 s cold budget",
        f"503 {error['code']} after {plain_s:.1f}s; a stream: {streamed.kind}",
        plain_s,
    )
