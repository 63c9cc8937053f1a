"""Per-key and per-tenant limits for requests, shared through Redis (`warmpool.request_limits`).

One extra round trip, and only for keys with a limit or tenants with a quota. Tenant quotas are
cached in-process for `ttl_s` (like keys), so the warm path reads no tenant record from Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from queue_gateway.errors import RateLimited
from warmpool.apikeys import ApiKeyRecord
from warmpool.keys import Keys
from warmpool.redisio import text
from warmpool.request_limits import ACQUIRE_LUA
from warmpool.tenants import TenantStore

MAX_TENANTS = 10_000
"""Beyond this the tenant cache is cleared."""


class KeyLimits:
    """Check and book a request against its key's limits and its tenant's quota."""

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, ttl_s: float = 5.0, clock: Callable[[], float] | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.tenants = TenantStore(redis, keys)
        self.ttl_s = ttl_s
        self.clock = clock
        self._acquire = redis.register_script(ACQUIRE_LUA)
        self._quotas: dict[str, tuple[float, int | None]] = {}

    async def tenant_quota(self, tenant: str, now_s: float) -> int | None:
        """The tenant's `max_concurrent_requests` (None: unlimited), cached for `ttl_s`."""
        hit = self._quotas.get(tenant)
        if hit is not None and hit[0] > now_s:
            return hit[1]
        spec = await self.tenants.get(tenant)
        quota = None if spec is None else spec.max_concurrent_requests
        if len(self._quotas) >= MAX_TENANTS:
            self._quotas.clear()
        self._quotas[tenant] = (now_s + self.ttl_s, quota)
        return quota

    async def acquire(self, record: ApiKeyRecord, holder: str, request_id: str, *, now_s: float) -> bool:
        """Book the request for `holder` (a gateway id, or `ASYNC_HOLDER`); raises `RateLimited`.

        Returns whether `release` must be called.
        """
        tenant_limit = await self.tenant_quota(record.tenant, now_s)
        if record.rpm_limit is None and record.concurrency_limit is None and tenant_limit is None:
            return False
        res: list[Any] = await self._acquire(
            args=[
                self.keys.prefix,
                record.key_id,
                record.tenant,
                holder,
                request_id,
                repr(now_s),
                record.rpm_limit or 0,
                record.concurrency_limit or 0,
                tenant_limit or 0,
            ]
        )
        what = text(res[0])
        if what == "rpm":
            raise RateLimited(
                f"Rate limit reached: {record.rpm_limit} requests per minute for this key.",
                retry_after_s=float(res[1]),
            )
        if what == "concurrency":
            raise RateLimited(
                f"Too many concurrent requests: at most {record.concurrency_limit} for this key.",
                retry_after_s=float(res[1]),
            )
        if what == "tenant":
            raise RateLimited(
                f"Too many concurrent requests: at most {tenant_limit} for tenant {record.tenant}.",
                retry_after_s=float(res[1]),
            )
        return record.concurrency_limit is not None or tenant_limit is not None

    async def release(self, record: ApiKeyRecord, holder: str, request_id: str) -> None:
        member = f"{holder}|{request_id}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.key_concurrency(record.key_id), member)
            pipe.zrem(self.keys.tenant_concurrency(record.tenant), member)
            await pipe.execute()
