"""The gateway's Redis-side pieces on a synthetic clock: grant safety net, leases, async claims."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from queue_gateway.hold import GrantHub, Lease, TicketLost
from warmpool.async_requests import AsyncRequests, AsyncState
from warmpool.keys import Keys
from warmpool.routing import Routing

NOW = 1_000_000.0


async def test_a_lost_grant_message_is_caught_by_the_ticket_check(redis_client: aioredis.Redis) -> None:
    routing = Routing(redis_client)
    hub = GrantHub(redis_client, Keys(), "gw1")  # not listening: every pubsub message is lost
    grant = hub.expect("t1")
    await routing.admit("m", "gw1", "t1", now_s=NOW, queue_max=10, global_max=10)
    await hub.check()
    assert not grant.done()
    await routing.activate("m", "i1", cap=1)
    await hub.check()
    assert grant.result() == "i1"
    assert hub.waiting == 0


async def test_a_reaped_ticket_fails_its_waiter(redis_client: aioredis.Redis) -> None:
    routing = Routing(redis_client)
    hub = GrantHub(redis_client, Keys(), "gw1")
    grant = hub.expect("t1")
    await routing.heartbeat("gw1", now_s=NOW, ttl_s=5)
    await routing.admit("m", "gw1", "t1", now_s=NOW, queue_max=10, global_max=10)
    await hub.check()  # seen queued
    assert await routing.reap(now_s=NOW + 6) == 1
    await hub.check()
    with pytest.raises(TicketLost):
        grant.result()


async def test_lease_tick_renews_and_reaps_others(redis_client: aioredis.Redis) -> None:
    routing = Routing(redis_client)
    clock = [NOW]
    lease = Lease(routing, "alive", ttl_s=10, clock=lambda: clock[0])
    await routing.heartbeat("dead", now_s=NOW, ttl_s=10)
    await routing.activate("m", "i1", cap=2)
    await routing.admit("m", "dead", "r1", now_s=NOW, queue_max=10, global_max=10)
    assert await lease.tick() == 0
    clock[0] = NOW + 11
    assert await lease.tick() == 1
    assert await routing.inflight("m") == {"i1": 0}
    assert await redis_client.zscore("sl:gateways", "alive") == NOW + 21


async def test_async_claims_lapse_and_move_to_another_gateway(redis_client: aioredis.Redis) -> None:
    store = AsyncRequests(redis_client)
    await store.submit(
        "r1", "gwA", path="/v1/completions", body=b'{"p":1}', model="m", tenant="t", key_id="k",
        admin=False, now_s=NOW, lease_s=5, pending_ttl_s=600,
    )  # fmt: skip
    assert await store.claim("gwB", now_s=NOW + 1, lease_s=5, limit=10) == [], "A's claim holds"
    assert await store.renew("gwA", ["r1"], now_s=NOW + 4, lease_s=5) == []
    assert await store.claim("gwB", now_s=NOW + 8, lease_s=5, limit=10) == [], "renewed until NOW+9"
    assert await store.claim("gwB", now_s=NOW + 10, lease_s=5, limit=10) == ["r1"]
    assert await store.renew("gwA", ["r1"], now_s=NOW + 10, lease_s=5) == ["r1"], "A lost it"
    ok = await store.finish(
        "r1", "gwA", status=200, content_type="application/json", result=b"{}", cold_start=False,
        queue_wait_ms=0, now_s=NOW + 11, result_ttl_s=60,
    )  # fmt: skip
    assert not ok, "only the owner stores a result"
    assert await store.finish(
        "r1", "gwB", status=200, content_type="application/json", result=b'{"ok":1}', cold_start=True,
        queue_wait_ms=1234, now_s=NOW + 12, result_ttl_s=60,
    )  # fmt: skip
    record = await store.get("r1")
    assert record is not None and record.state is AsyncState.DONE and record.body is None
    assert (record.result, record.cold_start, record.queue_wait_ms, record.attempts) == (b'{"ok":1}', True, 1234, 2)
    assert await store.pending() == 0
    assert 0 < await redis_client.ttl("sl:async:r1") <= 60


async def test_abandoned_requests_are_claimable_at_once(redis_client: aioredis.Redis) -> None:
    store = AsyncRequests(redis_client)
    await store.submit(
        "r1", "gwA", path="/v1/completions", body=b"{}", model="m", tenant="t", key_id="k",
        admin=False, now_s=NOW, lease_s=30, pending_ttl_s=600,
    )  # fmt: skip
    assert await store.abandon("gwA", ["r1"]) == 1
    assert await store.claim("gwB", now_s=NOW + 1, lease_s=30, limit=10) == ["r1"]
