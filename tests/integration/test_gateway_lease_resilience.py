"""A gateway's background loops must survive any error: a dead lease loop lets the reaper take the
live process's tickets (seen in the fault suite as "queue ticket was lost" after a Redis restart)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis

from queue_gateway.hold import Lease
from warmpool.redisio import awaited
from warmpool.routing import Routing


async def test_lease_loop_keeps_renewing_after_an_unexpected_error(redis_client: aioredis.Redis) -> None:
    failures = 0

    async def flaky_tick() -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise EOFError("connection closed mid-read")  # neither RedisError nor OSError

    lease = Lease(Routing(redis_client), "gw-x", ttl_s=0.3, clock=time.time, on_tick=flaky_tick)
    task = asyncio.create_task(lease.loop())
    try:
        await asyncio.sleep(0.35)
        assert failures >= 1
        first = await awaited(redis_client.zscore("sl:gateways", "gw-x"))
        await asyncio.sleep(0.6)
        later = await awaited(redis_client.zscore("sl:gateways", "gw-x"))
        assert not task.done(), "the lease loop died"
        assert first is not None and later is not None and later > first, "the lease was not renewed"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
