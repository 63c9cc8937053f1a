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


class WarmBoard:
    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()

    async def request(self, warm: WarmRequest) -> None:
        """Record the request (expiring at its deadline) and wake the launcher."""
        ttl_s = max(1, math.ceil(warm.until_s - warm.requested_s))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.warm(warm.model), warm.model_dump_json(), ex=ttl_s)
            pipe.publish(self.keys.demand_channel, warm.model)
            await pipe.execute()

    async def get(self, model: str, *, now_s: float) -> WarmRequest | None:
        """The live request for `model`, or None (also when its deadline passed on the caller's clock)."""
        raw = await awaited(self.redis.get(self.keys.warm(model)))
        if raw is None:
            return None
        warm = WarmRequest.model_validate_json(raw)
        return warm if warm.until_s > now_s else None

    async def cancel(self, model: str) -> bool:
        return bool(await awaited(self.redis.delete(self.keys.warm(model))))
