"""Faults of slurmless's own processes and of Redis: launcher, standby, gateway, redis-server.

Held and async requests must not be lost where the architecture says they survive (docs/architecture.md,
"Scale and failure"), held synchronous connections may die with their gateway but their tickets must
not linger, and warm traffic must not notice a launcher dying.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.client import StreamOutcome, poll_async, stream_chat, submit_async
from tests.faults.results import record
from tests.faults.stack import LAUNCHER_LEASE_TTL_S, SHORT_GATEWAY_LEASE_TTL_S, FaultStack
from warmpool.apikeys import ApiKeyStore
from warmpool.models import ModelStore

pytestmark = [pytest.mark.slurm, pytest.mark.faults]

COLD_TIMEOUT_S = 90.0


async def _wait(check_s: float, what: str, predicate: object) -> float:
    """Poll an async predicate until true; returns the seconds it took."""
    assert callable(predicate)
    t0 = time.monotonic()
    while not await predicate():
        assert time.monotonic() - t0 < check_s, f"timed out after {check_s}s waiting for {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def _no_leftovers(fs: FaultStack, models: list[str], timeout_s: float = 20.0) -> None:
    left = await fs.settled_leftovers(models, timeout_s=timeout_s)
    assert not left, f"tickets or slots left in Redis: {left}"


@pytest.mark.timeout(180)
async def test_kill_9_launcher_with_a_cold_start_under_way_then_restart(
    fault_stack: FaultStack, http: httpx.AsyncClient
) -> None:
    fs = fault_stack
    model = await fs.register("lkill")
    held = asyncio.create_task(stream_chat(http, fs.url, fs.key, model, max_tokens=8, timeout_s=COLD_TIMEOUT_S))

    async def submitted() -> bool:
        return any(r.job_id for r in await fs.live(model))

    await _wait(30, "the cold start's job", submitted)
    t0 = time.monotonic()
    old_pid = fs.kill9("launcher")
    # Restarted on the same callback port at once, as a supervisor would: the job's registration
    # (retried by the job script) reaches the new process, which takes the lease once the dead
    # one's expires and adopts the job from squeue + Redis.
    new = fs.spawn("launcher")
    out = await asyncio.wait_for(held, timeout=COLD_TIMEOUT_S + 10)
    recovery_s = time.monotonic() - t0
    assert out.ok, out

    async def new_leads() -> bool:
        holder = await fs.leader()
        return holder is not None and f"-{new.pid}-" in holder

    # Callbacks are served by any launcher, so the request may be served before the dead
    # leader's lease has expired and the new process leads.
    leads_s = await _wait(LAUNCHER_LEASE_TTL_S * 5, "the restarted launcher's lease", new_leads) + recovery_s
    instances = await fs.instances(model)
    assert len(instances) == 1, f"the job was submitted twice: {instances}"
    assert instances[0].state.value == "ready"
    await _no_leftovers(fs, [model])
    record(
        "kill -9 of the launcher during a cold start, then restart",
        "held request completes; new launcher adopts the job; no duplicate submission",
        f"request {out.kind} {out.elapsed_s:.1f}s after arrival ({out.comments} progress comments); "
        f"pid {old_pid} -> {new.pid} leader {leads_s:.1f}s after the kill; {len(instances)} instance",
        recovery_s,
    )


@pytest.mark.timeout(180)
async def test_kill_9_leader_standby_takes_over(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    warm = await fs.register("lwarm", keepalive_s=60)
    first = await stream_chat(http, fs.url, fs.key, warm, max_tokens=4, timeout_s=COLD_TIMEOUT_S)
    assert first.ok, first
    standby = fs.spawn("launcher-standby", SLURMLESS_LAUNCHER__CALLBACK_PORT="0")
    leader_pid = fs.process("launcher").pid
    leader = await fs.leader()
    assert leader is not None and f"-{leader_pid}-" in leader

    t0 = time.monotonic()
    fs.kill9("launcher")
    cold = await fs.register("lcold")
    cold_req = asyncio.create_task(stream_chat(http, fs.url, fs.key, cold, max_tokens=8, timeout_s=COLD_TIMEOUT_S))

    # Warm traffic through the takeover: routing lives in Redis, not in the launcher.
    warm_results: list[StreamOutcome] = []

    async def standby_leads() -> bool:
        holder = await fs.leader()
        return holder is not None and f"-{standby.pid}-" in holder

    takeover = asyncio.create_task(_wait(LAUNCHER_LEASE_TTL_S * 5, "the standby's takeover", standby_leads))
    while not takeover.done() or time.monotonic() - t0 < LAUNCHER_LEASE_TTL_S + 2:
        warm_results.append(await stream_chat(http, fs.url, fs.key, warm, max_tokens=4, timeout_s=30))
        await asyncio.sleep(0.2)
    takeover_s = await takeover
    out = await asyncio.wait_for(cold_req, timeout=COLD_TIMEOUT_S + 10)
    recovery_s = time.monotonic() - t0

    assert all(r.ok for r in warm_results), [r.kind for r in warm_results if not r.ok]
    assert out.ok, out
    assert takeover_s < LAUNCHER_LEASE_TTL_S * 3
    # The old leader is restarted and stands by, so the stack keeps two launchers.
    fs.spawn("launcher")
    await _no_leftovers(fs, [warm, cold])
    record(
        "kill -9 of the leader launcher; the standby taking over",
        "warm traffic unaffected; standby leads within ~lease TTL; a new cold model is served",
        f"{len(warm_results)}/{len(warm_results)} warm requests ok during takeover; standby leader after "
        f"{takeover_s:.1f}s (lease TTL {LAUNCHER_LEASE_TTL_S:g}s); cold request {out.kind} after {out.elapsed_s:.1f}s",
        recovery_s,
    )


@pytest.mark.timeout(180)
async def test_kill_9_gateway_with_async_requests_queued(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("gwkill")
    gw = fs.spawn_gateway(SLURMLESS_GATEWAY__LEASE_TTL_S=str(SHORT_GATEWAY_LEASE_TTL_S))

    async def ready() -> bool:
        try:
            return (await http.get(gw.url + "/readyz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    await _wait(30, "the second gateway", ready)
    rids = [await submit_async(http, gw.url, fs.key, model, max_tokens=8) for _ in range(5)]
    held = [
        asyncio.create_task(stream_chat(http, gw.url, fs.key, model, max_tokens=8, timeout_s=COLD_TIMEOUT_S))
        for _ in range(3)
    ]

    async def all_queued() -> bool:
        async with fs.redis() as r:
            return int(await r.zcard(fs.keys.queue(model))) >= 8

    await _wait(15, "8 queued tickets", all_queued)
    t0 = time.monotonic()
    gw.kill9()
    cut = await asyncio.wait_for(asyncio.gather(*held), timeout=30)
    cut_s = time.monotonic() - t0
    # Held synchronous connections die with their gateway: the client sees the connection close.
    assert all(c.kind == "closed" for c in cut), [c.kind for c in cut]

    # Async requests survive: the stack's own gateway claims them once the dead one's claim lapses.
    answers = await asyncio.gather(*(poll_async(http, fs.url, fs.key, rid, timeout_s=COLD_TIMEOUT_S) for rid in rids))
    recovery_s = time.monotonic() - t0
    assert [a.status_code for a in answers] == [200] * len(rids), [a.text[:200] for a in answers]
    assert all(a.json()["choices"][0]["message"]["content"] for a in answers)

    await _no_leftovers(fs, [model], timeout_s=SHORT_GATEWAY_LEASE_TTL_S * 5)
    record(
        "kill -9 of a gateway with async requests queued",
        "held sync clients see the connection close; async requests complete via another gateway; "
        "dead gateway's tickets reaped",
        f"{len(cut)} held streams closed within {cut_s:.1f}s; {len(answers)}/{len(rids)} async requests 200 "
        f"via the other gateway; no ticket or slot left",
        recovery_s,
    )


@pytest.mark.timeout(180)
async def test_redis_server_restart_with_aof(fault_stack: FaultStack, http: httpx.AsyncClient) -> None:
    fs = fault_stack
    model = await fs.register("redis", keepalive_s=60)
    first = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=COLD_TIMEOUT_S)
    assert first.ok, first
    done_rid = await submit_async(http, fs.url, fs.key, model, max_tokens=4)
    before = await poll_async(http, fs.url, fs.key, done_rid, timeout_s=30)
    assert before.status_code == 200
    [inst] = await fs.ready(model)
    started = asyncio.Event()
    stream = asyncio.create_task(
        stream_chat(http, fs.url, fs.key, model, max_tokens=400, timeout_s=60, started=started)
    )
    await asyncio.wait_for(started.wait(), timeout=30)
    await asyncio.sleep(1.5)  # AOF is fsynced every second: what is older than that must survive a crash

    t0 = time.monotonic()
    fs.redis_server.kill()
    during = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=30)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(fs.redis_server.start)
    down_s = time.monotonic() - t0

    failures: list[str] = [] if during.ok else [during.kind]
    while True:
        after = await stream_chat(http, fs.url, fs.key, model, max_tokens=4, timeout_s=30)
        if after.ok:
            break
        failures.append(after.kind)
        assert time.monotonic() - t0 < 60, failures
        await asyncio.sleep(0.25)
    recovery_s = time.monotonic() - t0
    cont = await asyncio.wait_for(stream, timeout=60)

    # A request while Redis is down is refused cleanly (503), not hung.
    allowed = {"http 503 model_unavailable"}
    assert set(failures) <= allowed, failures
    assert cont.ok, cont
    async with fs.redis() as r:
        assert await ModelStore(r, fs.keys).get(model) is not None
        assert await ApiKeyStore(r, fs.keys).verify(fs.key, now_s=time.time()) is not None
    still = await poll_async(http, fs.url, fs.key, done_rid, timeout_s=10)
    assert still.status_code == 200 and still.json() == before.json()
    assert [r.id for r in await fs.ready(model)] == [inst.id]
    for name in ("launcher", "gateway"):
        fs.process(name)  # alive
    await _no_leftovers(fs, [model])
    record(
        "redis-server kill -9 and restart with AOF",
        "in-flight stream completes; requests during the outage get 503; state (models, keys, instances, "
        "async results) survives; no slot leaked",
        f"redis down {down_s:.1f}s; during outage: {', '.join(failures) or 'all ok'}; in-flight stream "
        f"{cont.kind}; model, key, instance, async result intact",
        recovery_s,
    )
