"""Optional per-key limits: requests per minute and concurrent requests, shared through Redis.

One extra round trip, and only for keys that have a limit. Requests per minute use a fixed
one-minute window. Concurrent requests are a sorted set of `gateway|request` members, so that
the members of a gateway process that died (its lease lapsed) are dropped when the key is full.

Keys: `Keys.key_rpm` and `Keys.key_concurrency` (warmpool/keys.py); the script builds the same names from the prefix.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from queue_gateway.errors import RateLimited
from warmpool.apikeys import ApiKeyRecord
from warmpool.keys import Keys
from warmpool.redisio import text

# ARGV: prefix, key_id, gw, rid, now_s, rpm_limit (0 = none), concurrency_limit (0 = none)
_ACQUIRE = """
local prefix, kid, gw, rid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local rpm, conc = tonumber(ARGV[6]), tonumber(ARGV[7])
local rk = prefix .. 'klim:' .. kid .. ':rpm:' .. math.floor(now / 60)
if rpm > 0 and tonumber(redis.call('GET', rk) or '0') >= rpm then
  return {'rpm', math.ceil(60 - (now % 60))}
end
if conc > 0 then
  local ck = prefix .. 'klim:' .. kid .. ':conc'
  if redis.call('ZCARD', ck) >= conc then
    for _, m in ipairs(redis.call('ZRANGE', ck, 0, -1)) do
      local g = string.sub(m, 1, string.find(m, '|', 1, true) - 1)
      local lease = redis.call('ZSCORE', prefix .. 'gateways', g)
      if (not lease) or tonumber(lease) < now then redis.call('ZREM', ck, m) end
    end
    if redis.call('ZCARD', ck) >= conc then return {'concurrency', 1} end
  end
  redis.call('ZADD', ck, now, gw .. '|' .. rid)
  redis.call('EXPIRE', ck, 86400)
end
if rpm > 0 then
  redis.call('INCR', rk)
  redis.call('EXPIRE', rk, 120)
end
return {'ok', 0}
"""


class KeyLimits:
    """Check and book a request against its key's limits."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._acquire = redis.register_script(_ACQUIRE)

    def _conc_key(self, key_id: str) -> str:
        return self.keys.key_concurrency(key_id)

    async def acquire(self, record: ApiKeyRecord, gateway_id: str, request_id: str, *, now_s: float) -> bool:
        """Book the request; raises `RateLimited`. Returns whether `release` must be called."""
        if record.rpm_limit is None and record.concurrency_limit is None:
            return False
        res: list[Any] = await self._acquire(
            args=[
                self.keys.prefix,
                record.key_id,
                gateway_id,
                request_id,
                repr(now_s),
                record.rpm_limit or 0,
                record.concurrency_limit or 0,
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
        return record.concurrency_limit is not None

    async def release(self, record: ApiKeyRecord, gateway_id: str, request_id: str) -> None:
        await self.redis.zrem(self._conc_key(record.key_id), f"{gateway_id}|{request_id}")
