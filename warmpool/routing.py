"""Slots, queues and grants: the atomic Redis steps behind every request.

Each public method is one round trip (a Lua script), so that many gateway processes and the
launcher can share one Redis without a ticket ever being lost or granted twice:

- `admit`: take a slot on the least-loaded ready instance, or else enqueue a ticket (FIFO; a
  new request never overtakes a queued one). It also records demand history and idle gaps
  (`warmpool.gaps`) for the policies and publishes a demand signal when a model's queue gets its first ticket.
- `release`: give a slot back; if tickets wait, the slot goes to the head of the queue at once.
- `cancel`: a client left or ran out of budget; its ticket goes, or its slot if it was granted.
- `activate` / `deactivate`: the launcher adds a ready instance (granting waiting tickets) or
  stops routing to one.
- `reap`: slots and tickets of gateway processes whose lease lapsed are reclaimed.

Every step that changes a model's queue, its instances' load or its demand adds the model to
`Keys.dirty_models` in the same script, so the launcher's tick re-reads only those models.

The time is always passed in (`now_s`) so that tests drive these steps on a synthetic clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from warmpool.gaps import RECORD_LUA as GAPS_RECORD_LUA
from warmpool.keys import DEMAND_RETENTION_SLOTS, DEMAND_SLOT_S, IDLE_HIST_MAX_MIN, Keys
from warmpool.redisio import awaited, text

DEFAULT_CAP = 64
"""Per-instance concurrency when the launcher has not said otherwise."""

# Shared Lua: grant queued tickets FIFO to the least-loaded ready instances below their cap.
# The slot of a granted ticket is booked under the gateway that holds its client, and that
# gateway is told on its channel.
_PUMP = """
local function touch(prefix, model)
  redis.call('SADD', prefix .. 'dirty', model)
end
local function cap_of(prefix, model)
  local c = redis.call('HGET', prefix .. 'caps', model)
  if c then return tonumber(c) end
  return %(default_cap)d
end
local function pump(prefix, model)
  local ready = prefix .. 'ready:' .. model
  local queue = prefix .. 'q:' .. model
  local cap = cap_of(prefix, model)
  local granted = 0
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)
    if #head == 0 then
      redis.call('SREM', prefix .. 'qmodels', model)
      break
    end
    local best = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
    if #best == 0 or tonumber(best[2]) >= cap then break end
    local tid, iid = head[1], best[1]
    redis.call('ZREM', queue, tid)
    redis.call('DECR', prefix .. 'qtotal')
    local tkey = prefix .. 't:' .. tid
    local gw = redis.call('HGET', tkey, 'gw')
    if gw then
      redis.call('ZINCRBY', ready, 1, iid)
      redis.call('HSET', tkey, 'state', 'granted', 'iid', iid)
      redis.call('EXPIRE', tkey, 300)
      redis.call('SREM', prefix .. 'gw:' .. gw .. ':tickets', tid)
      redis.call('HSET', prefix .. 'gw:' .. gw .. ':slots', tid, model .. '|' .. iid)
      redis.call('PUBLISH', prefix .. 'gwch:' .. gw, tid .. '|' .. iid)
      granted = granted + 1
    end
  end
  if granted > 0 then touch(prefix, model) end
  return granted
end
local function unload(prefix, model, iid)
  local ready = prefix .. 'ready:' .. model
  local score = redis.call('ZSCORE', ready, iid)
  if score and tonumber(score) > 0 then redis.call('ZINCRBY', ready, -1, iid) end
  touch(prefix, model)
end
""".replace("%(default_cap)d", str(DEFAULT_CAP))

# KEYS: none (all built from the prefix). ARGV: prefix, model, gw, rid, queue_max, global_max,
# now_s, slot, first_ticket_signal(0/1), head(0/1: a request its engine died on, queued first and never
# refused for a full queue)
_ADMIT = (
    (
        _PUMP
        + """
local prefix, model, gw, rid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local queue_max, global_max, now = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ready = prefix .. 'ready:' .. model
local queue = prefix .. 'q:' .. model
local mstat = prefix .. 'mstat:' .. model
touch(prefix, model)
local dem = prefix .. 'dem:' .. model
if redis.call('HINCRBY', dem, ARGV[8], 1) == 1 and redis.call('HLEN', dem) > %(retention)d + 144 then
  -- The first request of a new slot trims slots older than the retention (rarely: a day's slack).
  local oldest = tonumber(ARGV[8]) - %(retention)d
  for _, slot in ipairs(redis.call('HKEYS', dem)) do
    if tonumber(slot) < oldest then redis.call('HDEL', dem, slot) end
  end
end
local last = redis.call('HGET', mstat, 'last_request_s')
if last then
  local gap = now - tonumber(last)
  if gap >= 60 then
    redis.call('HINCRBY', prefix .. 'idle:' .. model, math.min(math.floor(gap / 60), %(idle_max)d), 1)
  end
end
"""
        + GAPS_RECORD_LUA
        + """
redis.call('HSET', mstat, 'last_request_s', ARGV[7])
local nready = redis.call('ZCARD', ready)
local qlen = redis.call('ZCARD', queue)
if qlen == 0 and nready > 0 then
  local best = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
  local load, cap = tonumber(best[2]), cap_of(prefix, model)
  if load < cap then
    redis.call('ZINCRBY', ready, 1, best[1])
    redis.call('HSET', prefix .. 'gw:' .. gw .. ':slots', rid, model .. '|' .. best[1])
    return {'slot', best[1], 0, nready, load + 1, cap}
  end
end
local head = ARGV[10] == '1'
if qlen >= queue_max and not head then return {'full', '', qlen, nready} end
local total = tonumber(redis.call('GET', prefix .. 'qtotal') or '0')
if total >= global_max and not head then return {'full_global', '', qlen, nready} end
local seq
local first = head and redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES') or {}
if #first > 0 then seq = tonumber(first[2]) - 1 else seq = redis.call('INCR', prefix .. 'seq') end
redis.call('ZADD', queue, seq, rid)
redis.call('INCR', prefix .. 'qtotal')
redis.call('SADD', prefix .. 'qmodels', model)
redis.call('HSET', prefix .. 't:' .. rid, 'model', model, 'gw', gw, 'state', 'queued', 'created_s', ARGV[7])
redis.call('SADD', prefix .. 'gw:' .. gw .. ':tickets', rid)
if qlen == 0 and ARGV[9] == '1' then redis.call('PUBLISH', prefix .. 'demand', model) end
return {'queued', '', qlen, nready}
"""
    )
    .replace("%(retention)d", str(DEMAND_RETENTION_SLOTS))
    .replace("%(idle_max)d", str(IDLE_HIST_MAX_MIN))
)

PUMP_LUA = _PUMP
"""The shared Lua helpers (`cap_of`, `pump`, `unload`), for other scripts that book slots (batch lines)."""

ADMIT_LUA = _ADMIT
"""The admit script's source, for clients that run it over their own connection (the gateway's pipeline)."""

# ARGV: prefix, gw, rid
_RELEASE = (
    _PUMP
    + """
local prefix, gw, rid = ARGV[1], ARGV[2], ARGV[3]
local slots = prefix .. 'gw:' .. gw .. ':slots'
local booked = redis.call('HGET', slots, rid)
if not booked then return -1 end
redis.call('HDEL', slots, rid)
local sep = string.find(booked, '|', 1, true)
local model, iid = string.sub(booked, 1, sep - 1), string.sub(booked, sep + 1)
unload(prefix, model, iid)
return pump(prefix, model)
"""
)

RELEASE_LUA = _RELEASE
"""The release script's source (see ADMIT_LUA)."""

# ARGV: prefix, model, gw, tid
_CANCEL = (
    _PUMP
    + """
local prefix, model, gw, tid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local queue = prefix .. 'q:' .. model
local tkey = prefix .. 't:' .. tid
if redis.call('ZREM', queue, tid) == 1 then
  touch(prefix, model)
  redis.call('DECR', prefix .. 'qtotal')
  redis.call('SREM', prefix .. 'gw:' .. gw .. ':tickets', tid)
  redis.call('DEL', tkey)
  if redis.call('ZCARD', queue) == 0 then redis.call('SREM', prefix .. 'qmodels', model) end
  return 'removed'
end
redis.call('DEL', tkey)
local slots = prefix .. 'gw:' .. gw .. ':slots'
local booked = redis.call('HGET', slots, tid)
if booked then
  redis.call('HDEL', slots, tid)
  local sep = string.find(booked, '|', 1, true)
  unload(prefix, string.sub(booked, 1, sep - 1), string.sub(booked, sep + 1))
  pump(prefix, string.sub(booked, 1, sep - 1))
  return 'released'
end
return 'gone'
"""
)

# ARGV: prefix, model, iid, cap
_ACTIVATE = (
    _PUMP
    + """
local prefix, model, iid = ARGV[1], ARGV[2], ARGV[3]
redis.call('HSET', prefix .. 'caps', model, ARGV[4])
redis.call('ZADD', prefix .. 'ready:' .. model, 'NX', 0, iid)
touch(prefix, model)
return pump(prefix, model)
"""
)

# ARGV: prefix, model, iid -> requests still in flight on it (-1 when it was not routed to)
_DEACTIVATE = """
local ready = ARGV[1] .. 'ready:' .. ARGV[2]
local score = redis.call('ZSCORE', ready, ARGV[3])
redis.call('ZREM', ready, ARGV[3])
if score then
  redis.call('SADD', ARGV[1] .. 'dirty', ARGV[2])
  return tonumber(score)
end
return -1
"""

# ARGV: prefix, model
_PUMP_ONE = _PUMP + "\nreturn pump(ARGV[1], ARGV[2])\n"

# ARGV: prefix, now_s -> number of dead gateways reaped
_REAP = (
    _PUMP
    + """
local prefix, now = ARGV[1], tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', prefix .. 'gateways', '-inf', now)
for _, gw in ipairs(dead) do
  local slots = prefix .. 'gw:' .. gw .. ':slots'
  local touched = {}
  local booked = redis.call('HVALS', slots)
  for _, b in ipairs(booked) do
    local sep = string.find(b, '|', 1, true)
    local model = string.sub(b, 1, sep - 1)
    unload(prefix, model, string.sub(b, sep + 1))
    touched[model] = true
  end
  local tickets = redis.call('SMEMBERS', prefix .. 'gw:' .. gw .. ':tickets')
  for _, tid in ipairs(tickets) do
    local tkey = prefix .. 't:' .. tid
    local model = redis.call('HGET', tkey, 'model')
    if model and redis.call('ZREM', prefix .. 'q:' .. model, tid) == 1 then
      redis.call('DECR', prefix .. 'qtotal')
      touch(prefix, model)
    end
    redis.call('DEL', tkey)
  end
  redis.call('DEL', slots, prefix .. 'gw:' .. gw .. ':tickets')
  redis.call('ZREM', prefix .. 'gateways', gw)
  for model, _ in pairs(touched) do pump(prefix, model) end
end
return #dead
"""
)


class AdmitOutcome(StrEnum):
    SLOT = "slot"
    """A slot on a ready instance was taken: proxy now."""
    QUEUED = "queued"
    """A ticket waits in the model's queue: hold the client until it is granted."""
    FULL = "full"
    """The model's queue is full."""
    FULL_GLOBAL = "full_global"
    """All queues together are full."""


@dataclass(frozen=True, slots=True)
class Admission:
    outcome: AdmitOutcome
    instance_id: str | None
    """The instance whose slot was taken (SLOT only)."""
    queue_ahead: int
    """Tickets ahead of this one (QUEUED) or the queue's length (FULL)."""
    ready_instances: int
    """Ready instances of the model at that moment: 0 means the model is cold."""
    load: int = 0
    """Requests in flight on the instance, this one included (SLOT only)."""
    cap: int = 0
    """The instance's concurrency cap (SLOT only)."""


def admit_args(
    prefix: str,
    model: str,
    gateway_id: str,
    request_id: str,
    *,
    now_s: float,
    queue_max: int,
    global_max: int,
    signal_demand: bool,
    head: bool = False,
) -> list[str | int]:
    """The admit script's ARGV (see `_ADMIT`), for every client that runs it."""
    slot = int(now_s // DEMAND_SLOT_S)
    flag = 1 if signal_demand else 0
    return [prefix, model, gateway_id, request_id, queue_max, global_max, repr(now_s), slot, flag, int(head)]


def admission(reply: list[Any]) -> Admission:
    """The admit script's reply, as an `Admission`."""
    slot = len(reply) > 5
    return Admission(
        AdmitOutcome(_s(reply[0])),
        _s(reply[1]) or None,
        int(reply[2]),
        int(reply[3]),
        int(reply[4]) if slot else 0,
        int(reply[5]) if slot else 0,
    )


class Routing:
    """The atomic routing steps for one deployment prefix."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)
        self._cancel = redis.register_script(_CANCEL)
        self._activate = redis.register_script(_ACTIVATE)
        self._deactivate = redis.register_script(_DEACTIVATE)
        self._pump = redis.register_script(_PUMP_ONE)
        self._reap = redis.register_script(_REAP)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    async def admit(
        self,
        model: str,
        gateway_id: str,
        request_id: str,
        *,
        now_s: float,
        queue_max: int,
        global_max: int,
        signal_demand: bool = True,
        head: bool = False,
    ) -> Admission:
        """Take a slot, or else enqueue a ticket `request_id` (one round trip).

        `head`: the request was sent to an engine that died before answering a byte; it is queued
        ahead of every waiting ticket, and a full queue does not refuse it (it was admitted once).
        """
        res: list[Any] = await self._admit(
            args=admit_args(
                self.prefix,
                model,
                gateway_id,
                request_id,
                now_s=now_s,
                queue_max=queue_max,
                global_max=global_max,
                signal_demand=signal_demand,
                head=head,
            )
        )
        return admission(res)

    async def release(self, gateway_id: str, request_id: str) -> int:
        """Give back the slot booked for `request_id`; returns tickets granted (-1: nothing was booked)."""
        return int(await self._release(args=[self.prefix, gateway_id, request_id]))

    async def cancel(self, model: str, gateway_id: str, ticket_id: str) -> str:
        """Withdraw a ticket: 'removed' from the queue, 'released' its granted slot, or 'gone'."""
        return _s(await self._cancel(args=[self.prefix, model, gateway_id, ticket_id]))

    async def activate(self, model: str, instance_id: str, *, cap: int) -> int:
        """Route to a ready instance with `cap` concurrent slots; returns tickets granted at once."""
        return int(await self._activate(args=[self.prefix, model, instance_id, cap]))

    async def deactivate(self, model: str, instance_id: str) -> int:
        """Stop routing to an instance; returns its requests in flight (-1 if it was not routed to)."""
        return int(await self._deactivate(args=[self.prefix, model, instance_id]))

    async def pump(self, model: str) -> int:
        """Grant whatever can be granted now (a safety net run on every launcher tick)."""
        return int(await self._pump(args=[self.prefix, model]))

    async def heartbeat(self, gateway_id: str, *, now_s: float, ttl_s: float) -> None:
        """Renew a gateway process's lease on its tickets and slots."""
        await self.redis.zadd(self.keys.gateways, {gateway_id: now_s + ttl_s})

    async def leave(self, gateway_id: str, *, now_s: float) -> int:
        """A clean shutdown: expire the lease now and reclaim at once."""
        await self.redis.zadd(self.keys.gateways, {gateway_id: now_s - 1})
        return await self.reap(now_s=now_s)

    async def reap(self, *, now_s: float) -> int:
        """Reclaim slots and tickets of gateway processes whose lease has lapsed."""
        return int(await self._reap(args=[self.prefix, repr(now_s)]))

    async def ticket(self, ticket_id: str) -> dict[str, str]:
        raw = await awaited(self.redis.hgetall(self.keys.ticket(ticket_id)))
        return {_s(k): _s(v) for k, v in raw.items()}

    async def position(self, model: str, ticket_id: str) -> int | None:
        """Tickets ahead of this one, or None when it is no longer queued."""
        rank = await self.redis.zrank(self.keys.queue(model), ticket_id)
        return None if rank is None else int(rank)

    async def queue_depth(self, model: str) -> int:
        return int(await self.redis.zcard(self.keys.queue(model)))

    async def queued_models(self) -> list[str]:
        return sorted(_s(m) for m in await awaited(self.redis.smembers(self.keys.queued_models)))

    async def inflight(self, model: str) -> dict[str, int]:
        """Ready instances of a model and their requests in flight."""
        pairs = await self.redis.zrange(self.keys.ready(model), 0, -1, withscores=True)
        return {_s(iid): int(score) for iid, score in pairs}

    async def oldest_ticket_age_s(self, model: str, *, now_s: float) -> float:
        head = await self.redis.zrange(self.keys.queue(model), 0, 0)
        if not head:
            return 0.0
        created = await awaited(self.redis.hget(self.keys.ticket(_s(head[0])), "created_s"))
        return max(0.0, now_s - float(created)) if created else 0.0


_s = text
