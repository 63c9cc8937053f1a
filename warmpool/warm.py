"""Explicit warm requests (`slurmless models warm`): keep a model at >= N replicas until a deadline.

The admin API writes one per model with a Redis expiry equal to its deadline, then publishes the
model on the demand channel so the launcher reacts at once; the launcher treats a live request
like `min_replicas` (policy name "warm") until it expires.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from warmpool.keys import Keys
from warmpool.redisio import awaited


class WarmRequest(BaseModel):
    model: str
    replicas: int = Field(1, ge=1, le=64)
    until_s: float
    requested_s: float
    requested_by: str = ""


def merge_warm(old: WarmRequest, new: WarmRequest) -> WarmRequest:
    """The larger replica count and the later deadline of two live requests."""
    later = new if new.until_s >= old.until_s else old
    return WarmRequest(
        model=new.model,
        replicas=max(old.replicas, new.replicas),
        until_s=later.until_s,
        requested_s=new.requested_s,
        requested_by=later.requested_by,
    )


class WarmBoard:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def request(self, warm: WarmRequest) -> WarmRequest:
        """Record the request (expiring at its deadline), wake the launcher, and return what is in force.

        A request never weakens a live one: the stored request keeps the larger replica count and the
        later deadline of the two (a tenant's short warm through its adapter cannot cut short an admin's
        long warm of the base). Each was within the requester's rights, so their union grants nothing
        either could not have asked for alone.
        """
        key = self.keys.warm(warm.model)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await awaited(pipe.get(key))
                    merged = warm
                    if raw is not None:
                        old = WarmRequest.model_validate_json(raw)
                        if old.until_s > warm.requested_s:
                            merged = merge_warm(old, warm)
                    ttl_s = max(1, math.ceil(merged.until_s - warm.requested_s))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, merged.model_dump_json(), ex=ttl_s)
                    pipe.sadd(self.keys.dirty_models, warm.model)
                    pipe.publish(self.keys.demand_channel, warm.model)
                    await pipe.execute()
                    return merged
                except aioredis.WatchError:
                    continue

    async def get(self, model: str, *, now_s: float) -> WarmRequest | None:
        """The live request for `model`, or None (also when its deadline passed on the caller's clock)."""
        raw = await awaited(self.redis.get(self.keys.warm(model)))
        if raw is None:
            return None
        warm = WarmRequest.model_validate_json(raw)
        return warm if warm.until_s > now_s else None

    async def cancel(self, model: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.warm(model))
            pipe.sadd(self.keys.dirty_models, model)
            deleted, _ = await pipe.execute()
        return bool(deleted)
