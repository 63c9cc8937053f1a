"""The atomic routing steps against a real redis-server: slots, FIFO grants, cancels, leases."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from warmpool.redisio import awaited
from warmpool.routing import AdmitOutcome, Routing

NOW = 1_000_000.0


async def admit(r: Routing, rid: str, gw: str = "gw1", model: str = "m", **kw: object) -> AdmitOutcome:
    opts: dict[str, object] = {"now_s": NOW, "queue_max": 100, "global_max": 1000} | kw
    res = await r.admit(model, gw, rid, **opts)  # type: ignore[arg-type]
    return res.outcome


async def test_cold_model_queues_and_signals_demand_once(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe("sl:demand")
    await pubsub.get_message(timeout=1)  # subscribe confirmation
    for i in range(5):
        res = await r.admit("m", "gw1", f"t{i}", now_s=NOW, queue_max=100, global_max=1000)
        assert res.outcome is AdmitOutcome.QUEUED
        assert res.queue_ahead == i
        assert res.ready_instances == 0
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert msg is not None and msg["data"] == b"m"
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert await r.queue_depth("m") == 5


async def test_activation_grants_fifo_up_to_cap(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    for i in range(5):
        await admit(r, f"t{i}", gw="gw1" if i % 2 else "gw2")
    granted = await r.activate("m", "i1", cap=3)
    assert granted == 3
    assert [await r.position("m", f"t{i}") for i in range(5)] == [None, None, None, 0, 1]
    assert (await r.ticket("t0"))["state"] == "granted"
    assert (await r.ticket("t0"))["iid"] == "i1"
    # A new request cannot overtake the two still queued.
    assert await admit(r, "late") is AdmitOutcome.QUEUED
    # Releasing t0's slot hands it straight to t3, the head of the queue.
    assert await r.release("gw2", "t0") == 1
    assert (await r.ticket("t3"))["state"] == "granted"
    assert await r.inflight("m") == {"i1": 3}


async def test_warm_fast_path_takes_least_loaded(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    await r.activate("m", "a", cap=2)
    await r.activate("m", "b", cap=2)
    outcomes = [await r.admit("m", "gw", f"r{i}", now_s=NOW, queue_max=10, global_max=10) for i in range(5)]
    assert [o.outcome for o in outcomes] == [AdmitOutcome.SLOT] * 4 + [AdmitOutcome.QUEUED]
    assert sorted(o.instance_id or "" for o in outcomes[:4]) == ["a", "a", "b", "b"]
    assert await r.inflight("m") == {"a": 2, "b": 2}
    for i in range(4):
        await r.release("gw", f"r{i}")
    assert await r.inflight("m") == {"a": 1, "b": 0} or await r.inflight("m") == {"a": 0, "b": 1}
    assert await r.release("gw", "r0") == -1, "a second release of the same slot must do nothing"


async def test_queue_bounds(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    assert await admit(r, "a", queue_max=2) is AdmitOutcome.QUEUED
    assert await admit(r, "b", queue_max=2) is AdmitOutcome.QUEUED
    assert await admit(r, "c", queue_max=2) is AdmitOutcome.FULL
    assert await admit(r, "d", model="other", global_max=2) is AdmitOutcome.FULL_GLOBAL


async def test_cancel_queued_and_granted(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    await admit(r, "a")
    await admit(r, "b")
    assert await r.cancel("m", "gw1", "a") == "removed"
    assert await r.queue_depth("m") == 0 or await r.position("m", "b") == 0
    await r.activate("m", "i", cap=1)  # grants b
    assert (await r.ticket("b"))["state"] == "granted"
    await admit(r, "c")
    # b's client left after its grant: its slot goes to c at once.
    assert await r.cancel("m", "gw1", "b") == "released"
    assert (await r.ticket("c"))["state"] == "granted"
    assert await r.cancel("m", "gw1", "nonexistent") == "gone"
    assert int(await redis_client.get("sl:qtotal") or 0) == 0


async def test_dead_gateway_reaped(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    await r.activate("m", "i", cap=1)
    await r.heartbeat("dead", now_s=NOW, ttl_s=10)
    await r.heartbeat("alive", now_s=NOW, ttl_s=100)
    assert await admit(r, "slot-of-dead", gw="dead") is AdmitOutcome.SLOT
    assert await admit(r, "queued-of-dead", gw="dead") is AdmitOutcome.QUEUED
    assert await admit(r, "queued-of-alive", gw="alive") is AdmitOutcome.QUEUED
    assert await r.reap(now_s=NOW + 5) == 0
    assert await r.reap(now_s=NOW + 11) == 1
    # The dead process's slot is free again and went to the live gateway's ticket.
    assert (await r.ticket("queued-of-alive"))["state"] == "granted"
    assert await r.ticket("queued-of-dead") == {}
    assert await r.inflight("m") == {"i": 1}
    assert await redis_client.exists("sl:gw:dead:slots", "sl:gw:dead:tickets") == 0


async def test_deactivate_stops_routing_and_release_is_safe(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    await r.activate("m", "i", cap=4)
    assert await admit(r, "x") is AdmitOutcome.SLOT
    assert await r.deactivate("m", "i") == 1
    assert await admit(r, "y") is AdmitOutcome.QUEUED
    assert await r.release("gw1", "x") == 0
    assert await r.inflight("m") == {}


async def test_concurrent_admits_never_double_grant(redis_client: aioredis.Redis) -> None:
    """Many gateways racing on one model: every ticket granted exactly once, never over the cap."""
    r = Routing(redis_client)
    n = 200
    await asyncio.gather(*(admit(r, f"t{i}", gw=f"gw{i % 4}", queue_max=n) for i in range(n)))
    assert await r.queue_depth("m") == n
    await asyncio.gather(r.activate("m", "a", cap=30), r.activate("m", "b", cap=30))
    granted: list[str] = []
    while len(granted) < n:
        inflight = await r.inflight("m")
        assert all(v <= 30 for v in inflight.values())
        states = {f"t{i}": await r.ticket(f"t{i}") for i in range(n)}
        newly = [t for t, s in states.items() if s.get("state") == "granted" and t not in granted]
        assert newly, "no progress"
        granted.extend(newly)
        await asyncio.gather(*(r.release(states[t]["gw"], t) for t in newly))
    assert len(set(granted)) == n
    assert await r.inflight("m") == {"a": 0, "b": 0}
    assert int(await redis_client.get("sl:qtotal") or 0) == 0


async def test_demand_history_and_idle_gaps(redis_client: aioredis.Redis) -> None:
    r = Routing(redis_client)
    await r.activate("m", "i", cap=10)
    await r.admit("m", "gw", "a", now_s=NOW, queue_max=10, global_max=10)
    await r.admit("m", "gw", "b", now_s=NOW + 30, queue_max=10, global_max=10)
    await r.admit("m", "gw", "c", now_s=NOW + 30 + 7 * 60, queue_max=10, global_max=10)
    dem = await awaited(redis_client.hgetall("sl:dem:m"))
    assert sum(int(v) for v in dem.values()) == 3
    assert await awaited(redis_client.hgetall("sl:idle:m")) == {b"7": b"1"}
