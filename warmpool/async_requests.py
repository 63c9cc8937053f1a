"""Async requests in Redis: submitted by one gateway process, run by whichever holds the claim.

`{p}async:{rid}` holds the request (path, body, model, tenant) until it finishes, then only the
result, which expires after the result TTL; the prompt is dropped when the result is written.
`{p}asyncq` maps each unfinished request to its claim deadline: the claiming gateway renews it
with its heartbeat; when a gateway dies the deadline lapses and another gateway claims the
request and runs it again (no answer had been stored, so nothing is lost or duplicated).
Every step is one atomic round trip.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from warmpool.keys import Keys
from warmpool.redisio import awaited, text


class AsyncState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class AsyncRecord(BaseModel):
    id: str
    state: AsyncState
    path: str = ""
    model: str = ""
    tenant: str = ""
    key_id: str = ""
    admin: bool = False
    body: bytes | None = None
    owner: str = ""
    attempts: int = 0
    created_s: float = 0.0
    finished_s: float | None = None
    status: int | None = None
    content_type: str = "application/json"
    result: bytes | None = None
    cold_start: bool = False
    queue_wait_ms: int = 0


# ARGV: prefix, rid, gw, claim_deadline_s, pending_ttl_s, then field/value pairs
_SUBMIT = """
local prefix, rid, gw = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'async:' .. rid
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, 'state', 'queued', 'owner', gw, 'attempts', 1, unpack(fields))
redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[5])))
redis.call('ZADD', prefix .. 'asyncq', ARGV[4], rid)
return 1
"""

# ARGV: prefix, gw, now_s, lease_s, limit -> claimed ids
_CLAIM = """
local prefix, gw, now, lease = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local q = prefix .. 'asyncq'
local out = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', q, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))) do
  local key = prefix .. 'async:' .. rid
  if redis.call('HGET', key, 'state') == 'done' or redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', q, rid)
  else
    redis.call('ZADD', q, now + lease, rid)
    redis.call('HSET', key, 'owner', gw, 'state', 'queued')
    redis.call('HINCRBY', key, 'attempts', 1)
    out[#out + 1] = rid
  end
end
return out
"""

# ARGV: prefix, gw, deadline_s, rid... -> ids no longer owned by gw
_RENEW = """
local prefix, gw, deadline = ARGV[1], ARGV[2], ARGV[3]
local lost = {}
for i = 4, #ARGV do
  local rid = ARGV[i]
  if redis.call('HGET', prefix .. 'async:' .. rid, 'owner') == gw then
    redis.call('ZADD', prefix .. 'asyncq', 'XX', deadline, rid)
  else
    lost[#lost + 1] = rid
  end
end
return lost
"""

# ARGV: prefix, gw, rid, state
_SET_STATE = """
local key = ARGV[1] .. 'async:' .. ARGV[3]
if redis.call('HGET', key, 'owner') ~= ARGV[2] then return 0 end
redis.call('HSET', key, 'state', ARGV[4])
return 1
"""

# ARGV: prefix, gw, rid, result_ttl_s, then field/value pairs
_FINISH = """
local prefix, gw, rid = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'async:' .. rid
if redis.call('HGET', key, 'owner') ~= gw or redis.call('HGET', key, 'state') == 'done' then return 0 end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, 'state', 'done', unpack(fields))
redis.call('HDEL', key, 'body')
redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[4])))
redis.call('ZREM', prefix .. 'asyncq', rid)
return 1
"""

# ARGV: prefix, gw, rid... : a clean shutdown hands unfinished requests to the other gateways now.
_ABANDON = """
local prefix, gw = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local key = prefix .. 'async:' .. ARGV[i]
  if redis.call('HGET', key, 'owner') == gw and redis.call('HGET', key, 'state') ~= 'done' then
    redis.call('HSET', key, 'owner', '', 'state', 'queued')
    redis.call('ZADD', prefix .. 'asyncq', 'XX', 0, ARGV[i])
    n = n + 1
  end
end
return n
"""


def _pairs(fields: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in fields.items():
        if v is None:
            continue
        out.extend((k, int(v) if isinstance(v, bool) else v))
    return out


_STATUS_FIELDS = (
    "state",
    "path",
    "model",
    "tenant",
    "key_id",
    "admin",
    "owner",
    "attempts",
    "created_s",
    "finished_s",
    "status",
    "content_type",
    "cold_start",
    "queue_wait_ms",
)
"""Every field but the prompt (`body`) and the answer (`result`)."""


class AsyncRequests:
    """The atomic steps of async requests."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._set_state = redis.register_script(_SET_STATE)
        self._finish = redis.register_script(_FINISH)
        self._abandon = redis.register_script(_ABANDON)

    async def submit(
        self,
        rid: str,
        gateway_id: str,
        *,
        path: str,
        body: bytes,
        model: str,
        tenant: str,
        key_id: str,
        admin: bool,
        now_s: float,
        lease_s: float,
        pending_ttl_s: float,
    ) -> None:
        """Store a request, claimed at once by the submitting gateway (which runs it)."""
        fields = {
            "path": path,
            "body": body,
            "model": model,
            "tenant": tenant,
            "key_id": key_id,
            "admin": admin,
            "created_s": repr(now_s),
        }
        await self._submit(
            args=[self.keys.prefix, rid, gateway_id, repr(now_s + lease_s), repr(pending_ttl_s), *_pairs(fields)]
        )

    async def claim(self, gateway_id: str, *, now_s: float, lease_s: float, limit: int) -> list[str]:
        """Take up to `limit` requests that nobody runs (their claim lapsed or was abandoned)."""
        res: list[Any] = await self._claim(args=[self.keys.prefix, gateway_id, repr(now_s), repr(lease_s), limit])
        return [text(r) for r in res]

    async def renew(self, gateway_id: str, rids: list[str], *, now_s: float, lease_s: float) -> list[str]:
        """Extend this gateway's claims; returns the ids it no longer owns."""
        if not rids:
            return []
        res: list[Any] = await self._renew(args=[self.keys.prefix, gateway_id, repr(now_s + lease_s), *rids])
        return [text(r) for r in res]

    async def mark_running(self, rid: str, gateway_id: str) -> bool:
        return bool(await self._set_state(args=[self.keys.prefix, gateway_id, rid, AsyncState.RUNNING.value]))

    async def finish(
        self,
        rid: str,
        gateway_id: str,
        *,
        status: int,
        content_type: str,
        result: bytes,
        cold_start: bool,
        queue_wait_ms: int,
        now_s: float,
        result_ttl_s: float,
    ) -> bool:
        """Store the answer and drop the prompt; False if another gateway owns the request now."""
        fields = {
            "status": status,
            "content_type": content_type,
            "result": result,
            "cold_start": cold_start,
            "queue_wait_ms": queue_wait_ms,
            "finished_s": repr(now_s),
        }
        return bool(await self._finish(args=[self.keys.prefix, gateway_id, rid, repr(result_ttl_s), *_pairs(fields)]))

    async def abandon(self, gateway_id: str, rids: list[str]) -> int:
        """Hand unfinished requests back for any gateway to claim at once."""
        if not rids:
            return 0
        return int(await self._abandon(args=[self.keys.prefix, gateway_id, *rids]))

    async def get(self, rid: str, *, prompt: bool = True, result: bool = True) -> AsyncRecord | None:
        """The record; a status poll reads it without the prompt (`body`) and without the answer."""
        if prompt and result:
            raw = await awaited(self.redis.hgetall(self.keys.async_request(rid)))
            f = {text(k): v for k, v in raw.items()}
        else:
            names = [*_STATUS_FIELDS, *(["body"] if prompt else []), *(["result"] if result else [])]
            values = await awaited(self.redis.hmget(self.keys.async_request(rid), names))
            f = {k: v for k, v in zip(names, values, strict=True) if v is not None}
        if "state" not in f:
            return None

        def s(name: str, default: str = "") -> str:
            return text(f[name]) if name in f else default

        return AsyncRecord(
            id=rid,
            state=AsyncState(s("state")),
            path=s("path"),
            model=s("model"),
            tenant=s("tenant"),
            key_id=s("key_id"),
            admin=s("admin", "0") == "1",
            body=f.get("body"),
            owner=s("owner"),
            attempts=int(s("attempts", "0")),
            created_s=float(s("created_s", "0")),
            finished_s=float(s("finished_s")) if "finished_s" in f else None,
            status=int(s("status")) if "status" in f else None,
            content_type=s("content_type", "application/json"),
            result=f.get("result"),
            cold_start=s("cold_start", "0") == "1",
            queue_wait_ms=int(s("queue_wait_ms", "0")),
        )

    async def state(self, rid: str) -> AsyncState | None:
        """Only the request's state: what a long poll reads while it waits."""
        raw = await awaited(self.redis.hget(self.keys.async_request(rid), "state"))
        return None if raw is None else AsyncState(text(raw))

    async def pending(self) -> int:
        """Unfinished async requests (all gateways)."""
        return int(await self.redis.zcard(self.keys.async_queue))
