"""Walltime expiry during a long stream: the renewal path, through the whole stack.

A model whose jobs get Slurm's shortest useful limit (2 minutes) needs a successor almost at once:
the launcher's renewal lead (p95 queue wait + p95 load + the job's 30 s warning + 60 s of Slurm
signal slack + a 20 s margin) exceeds what is left of the first job soon after it starts. Once the
successor is ready, routing moves to it and the old job drains through its own USR1 handler. A
stream running on the old instance must finish, and requests made meanwhile must never find the
model unserved.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.client import StreamOutcome, stream_chat
from tests.faults.results import record
from tests.faults.stack import INTER_TOKEN_MS, FaultStack

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

STREAM_TOKENS = 400
"""About 8 s at 20 ms a token: shorter than the old job's drain time (13 s for a 30 s warning)."""


@pytest.mark.timeout(240)
async def test_walltime_renewal_during_a_long_stream(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    # A short keep-alive, so the model's endless renewals stop soon after the test.
    model = await fs.register("walltime", time_limit_min=2, keepalive_s=20)
    first = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=90)
    assert first.ok, first
    [old] = await fs.ready(model)
    assert old.job_id is not None

    # The stream starts while the old instance is the only one routed to, so it runs there.
    assert [r.id for r in await fs.ready(model)] == [old.id]
    t0 = time.monotonic()
    long = asyncio.create_task(stream_chat(http, fs.url, fs.key, model, max_tokens=STREAM_TOKENS, timeout_s=120))
    probes: list[StreamOutcome] = []
    successor_id: str | None = None
    handed_over_s: float | None = None
    deadline = t0 + 150
    while True:
        probes.append(await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=30))
        current = {r.id: r for r in await fs.instances(model)}
        old_now = current[old.id]
        successor_id = old_now.successor or successor_id
        if handed_over_s is None and old_now.state.value != "ready":
            handed_over_s = time.monotonic() - t0
        if old_now.state.value == "gone" and long.done():
            break
        assert time.monotonic() < deadline, f"old instance still {old_now.state.value} ({old_now.reason})"
        await asyncio.sleep(0.3)
    retired_s = time.monotonic() - t0
    out = await long

    assert out.ok and out.chunks >= STREAM_TOKENS, out
    bad = [p.kind for p in probes if not p.ok]
    assert not bad, f"requests failed during the hand-over: {bad}"
    assert successor_id is not None
    assert old_now.reason == f"renewed by {successor_id}", old_now.reason
    assert old.end_time_s is not None
    jobs = {j.job_id for j in await fs.jobs()}
    assert int(old.job_id) not in jobs
    record(
        "walltime expiry during a long stream (renewal)",
        "successor ready before the old job's end; routing moves; the stream on the old instance "
        "finishes; no request finds the model unserved",
        f"{STREAM_TOKENS}-token stream ({STREAM_TOKENS * INTER_TOKEN_MS / 1000:.0f}s) {out.kind}; "
        f"old instance left routing {handed_over_s or 0:.1f}s in, gone after {retired_s:.1f}s "
        f"({old_now.reason}); {len(probes)}/{len(probes)} requests ok during the hand-over",
        None,
    )
