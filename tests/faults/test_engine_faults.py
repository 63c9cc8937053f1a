"""Faults below the gateway: the job is cancelled, the engine is killed, the node is lost.

Each test warms a fresh model, starts a long stream, injects the fault mid-stream, and checks what
the streaming client saw, that the next request is served again (timing the recovery), and that no
ticket or slot is left booked afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from tests.faults.client import StreamOutcome, stream_chat
from tests.faults.results import record
from tests.faults.stack import SLURMD_TIMEOUT_S, FaultStack, engine_pids

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

LONG_TOKENS = 2000
"""About 40 s at 20 ms a token: still streaming whenever a fault hits it."""
COLD_TIMEOUT_S = 90.0
RECOVERY_BOUND_S = 60.0


async def _warm(fs: FaultStack, http: httpx.AsyncClient, model: str) -> None:
    first = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=COLD_TIMEOUT_S)
    assert first.ok, first
    assert first.headers.get("x-slurmless-cold-start") == "true" or first.comments > 0


async def _long_stream(
    fs: FaultStack, http: httpx.AsyncClient, model: str
) -> tuple[asyncio.Task[StreamOutcome], asyncio.Event]:
    started = asyncio.Event()
    task = asyncio.create_task(
        stream_chat(http, fs.url, fs.key, model, max_tokens=LONG_TOKENS, timeout_s=120, started=started)
    )
    await asyncio.wait_for(started.wait(), timeout=30)
    return task, started


async def _recover(
    fs: FaultStack, http: httpx.AsyncClient, model: str, t0: float, *, allowed: frozenset[str] = frozenset()
) -> tuple[StreamOutcome, float, list[str]]:
    """Requests after the fault until one is served (held through a new cold start if need be).

    Returns the first served one, the seconds from the fault to its end, and the kinds of the
    failures before it, each of which must be in `allowed` (a clean, documented refusal).
    """
    failures: list[str] = []
    deadline = t0 + RECOVERY_BOUND_S * 2
    while True:
        after = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=COLD_TIMEOUT_S)
        if after.ok:
            return after, time.monotonic() - t0, failures
        assert after.kind in allowed, f"unexpected failure after the fault: {after}"
        failures.append(after.kind)
        assert time.monotonic() < deadline, f"not recovered: {failures}"
        await asyncio.sleep(0.25)


def _summary(failures: list[str]) -> str:
    if not failures:
        return "none refused"
    kinds = sorted(set(failures))
    return ", ".join(f"{failures.count(k)}x {k}" for k in kinds) + " before recovery"


async def _no_leftovers(fs: FaultStack, models: list[str], timeout_s: float = 15.0) -> None:
    left = await fs.settled_leftovers(models, timeout_s=timeout_s)
    assert not left, f"tickets or slots left in Redis: {left}"


@pytest.mark.timeout(240)
async def test_scancel_mid_stream(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("scancel")
    await _warm(fs, http, model)
    [inst] = await fs.ready(model)
    assert inst.job_id is not None
    stream, _ = await _long_stream(fs, http, model)

    t0 = time.monotonic()
    await fs.slurm().cancel(int(inst.job_id))
    cut = await asyncio.wait_for(stream, timeout=60)
    cut_s = time.monotonic() - t0
    # The job's TERM handler deregisters and gives in-flight work `term_drain_s` (10 s) while the
    # engine's own graceful shutdown (5 s) ends: the stream is cut and the gateway says so in-band.
    assert not cut.done, cut
    assert cut.status == 200 and cut.chunks >= 5
    assert cut.kind == "event upstream_failed", cut

    _, recovery_s, failures = await _recover(fs, http, model, t0)
    assert not failures, failures
    assert recovery_s < RECOVERY_BOUND_S
    gone = next(r for r in await fs.instances(model) if r.id == inst.id)
    assert gone.state.value in ("failed", "gone"), gone
    await _no_leftovers(fs, [model])
    record(
        "scancel of the job mid-stream",
        "stream cut with an SSE error event; next request served by a new job",
        f"stream cut after {cut_s:.1f}s ({cut.chunks} chunks, {cut.kind}); old instance {gone.state.value} "
        f"({gone.reason}); {_summary(failures)}",
        recovery_s,
    )


@pytest.mark.timeout(240)
async def test_kill_9_engine_mid_stream(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("killengine")
    await _warm(fs, http, model)
    [inst] = await fs.ready(model)
    stream, _ = await _long_stream(fs, http, model)
    [pid] = engine_pids(model)

    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    cut = await asyncio.wait_for(stream, timeout=30)
    cut_s = time.monotonic() - t0
    assert not cut.done and cut.status == 200 and cut.chunks >= 5
    assert cut.kind == "event upstream_failed", cut
    assert cut_s < 5, "a dead engine's stream must end at once"

    # Until the launcher hears of the death (the job's deregister callback, or a failed probe), the
    # instance may still be routed to: a request sent there finds it dead before any output and goes back
    # to the queue for the replacement (a clean 502 only if its retries run out); nothing hangs.
    after, recovery_s, failures = await _recover(fs, http, model, t0, allowed=frozenset({"http 502 upstream_failed"}))
    assert recovery_s < RECOVERY_BOUND_S
    failed = next(r for r in await fs.instances(model) if r.id == inst.id)
    assert failed.state.value == "failed", failed
    await _no_leftovers(fs, [model])
    record(
        "kill -9 of the engine mid-stream",
        "stream cut at once with an SSE error event; instance failed; next request served by a new job",
        f"cut after {cut_s:.1f}s ({cut.kind}); instance failed ({failed.reason}); {_summary(failures)}; "
        f"then served after a {after.elapsed_s:.1f}s cold start",
        recovery_s,
    )


@pytest.mark.timeout(240)
async def test_slurmd_stopped_node_lost(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("nodelost")
    await _warm(fs, http, model)
    [inst] = await fs.ready(model)
    stream, _ = await _long_stream(fs, http, model)

    t0 = time.monotonic()
    await asyncio.to_thread(fs.cluster.stop_slurmd)
    try:
        state = await asyncio.to_thread(fs.cluster.wait_node_state, ["DOWN", "NOT_RESPONDING"], SLURMD_TIMEOUT_S * 6)
        down_s = time.monotonic() - t0
        # Let the launcher see the lost node before it comes back.
        deadline = time.monotonic() + SLURMD_TIMEOUT_S * 6
        while (cur := next(r for r in await fs.instances(model) if r.id == inst.id)).state.value == "ready":
            assert time.monotonic() < deadline, f"launcher still routes to {inst.id} on a lost node ({state})"
            await asyncio.sleep(0.5)
        noticed_s = time.monotonic() - t0
    finally:
        await asyncio.to_thread(fs.cluster.start_slurmd, timeout_s=60)
    back_s = time.monotonic() - t0
    cut = await asyncio.wait_for(stream, timeout=120)

    _, recovery_s, failures = await _recover(fs, http, model, t0, allowed=frozenset({"http 502 upstream_failed"}))
    assert recovery_s < RECOVERY_BOUND_S * 2
    await _no_leftovers(fs, [model])
    record(
        "slurmd stopped (node lost)",
        "instance taken out of routing once Slurm marks the node down; served again when the node returns",
        f"node {state} after {down_s:.1f}s; instance {cur.state.value} ({cur.reason}) after {noticed_s:.1f}s; "
        f"slurmd back after {back_s:.1f}s; in-flight stream {cut.kind} ({cut.chunks} chunks); "
        f"{_summary(failures)}",
        recovery_s,
    )
