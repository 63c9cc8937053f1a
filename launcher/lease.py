"""The leader lease: one launcher acts, the others stand by and take over when it stops renewing.

A lease is a Redis string holding the holder's id with a TTL. It is taken with `SET NX PX`, renewed
with a compare-and-extend script (only the holder may extend it) and released with a
compare-and-delete, so a launcher that lost its lease (paused too long) can never extend or delete
the new holder's.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from warmpool.keys import Keys
from warmpool.redisio import text

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaderLease:
    """Take, keep and give back the launcher's leader lease."""

    def __init__(
        self, redis: aioredis.Redis, holder_id: str, *, ttl_s: float, keys: Keys | None = None, key: str | None = None
    ) -> None:
        self.redis = redis
        self.holder_id = holder_id
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.keys = keys or Keys()
        self.key = key or self.keys.leader
        """The lease's key: one per cluster (`Keys.cluster_leader`)."""
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)

    async def acquire_or_renew(self) -> bool:
        """Renew the lease if we hold it, else try to take it; True when we are the leader afterwards."""
        if int(await self._extend(keys=[self.key], args=[self.holder_id, self.ttl_ms])):
            return True
        return bool(await self.redis.set(self.key, self.holder_id, nx=True, px=self.ttl_ms))

    async def release(self) -> bool:
        """Give the lease up at a clean shutdown so a standby takes over at once."""
        return bool(int(await self._release(keys=[self.key], args=[self.holder_id])))

    async def holder(self) -> str | None:
        raw = await self.redis.get(self.key)
        return text(raw) if raw is not None else None
