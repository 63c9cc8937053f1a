"""Batches in Redis: their state, and per-line progress that survives any runner's death.

A batch's requests live on disk (the gateway's files directory); Redis holds only state:

- `{p}batch:{bid}`: the static doc (JSON) plus status, timestamps, counts and result file ids.
- `{p}bpend:{bid}`: every line without a recorded result -> its claim's lease deadline (0: free).
  A runner claims a line together with a slot on an instance (`take`, one round trip), renews the
  lease while the request runs, and records the result with `finish`, which succeeds only for the
  claim that still owns the line (`{p}bown:{bid}`) and only once (`{p}bdone:{bid}` keeps the token
  of that claim). A runner that dies stops renewing; its lines become free when the lease lapses
  and are run again; its late `finish` is refused, and a result it wrote to disk is ignored when the
  output is assembled because its token is not the recorded one. So each line's result appears
  exactly once.
- Batch lines take slots only from idle capacity: `take` refuses while any interactive ticket waits
  for the model, while the least-loaded ready instance has `fraction` of its cap or more in
  flight, or while that instance also serves interactive requests and already runs `beside` batch
  lines (a batch line's tokens cost its neighbours' latency); it never enqueues a ticket, never
  counts interactive demand and never signals the launcher. A line that finds no ready instance is
  recorded as batch demand (`{p}bdem:{model}`, `{p}bwait`). Lines in flight are listed per model
  (`{p}bflight:{model}`), so that the launcher's snapshot leaves them out of the interactive load
  it scales on; the launcher reads a batch's pending lines (`backlog`) as a class of its own
  (`launcher.batch_scaling`): with batch jobs off it never adds or keeps an instance for them.

Statuses follow OpenAI's: validating (lines being loaded) -> in_progress -> finalizing ->
completed | expired | cancelled (cancelling drains the lines in flight first); failed when no
line of the input was valid. Every step is one atomic round trip; the time is passed in.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from warmpool.keys import DEMAND_SLOT_S, Keys
from warmpool.redisio import awaited, text
from warmpool.routing import PUMP_LUA


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


FINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED})


class BatchDoc(BaseModel):
    """What a batch was created with; never changes."""

    id: str
    tenant: str
    key_id: str
    admin: bool = False
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None = None
    model: str = ""
    """The client's model name (one per batch, as OpenAI requires)."""
    created_at: int
    expires_at: int
    total: int
    """Lines of the input file."""
    good: int
    """Lines that parsed into a request (runnable); the others are reported in the error file."""
    errors: list[dict[str, Any]] = Field(default_factory=list)
    """Validation errors shown on a failed batch (OpenAI's `errors.data`)."""


class BatchRecord(BaseModel):
    doc: BatchDoc
    status: BatchStatus
    loaded: int = 0
    completed: int = 0
    failed: int = 0
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    final: str | None = None
    """The final status a finalizing batch will get."""

    def openai(self) -> dict[str, Any]:
        """The record as OpenAI's `batch` object."""
        d = self.doc
        return {
            "id": d.id,
            "object": "batch",
            "endpoint": d.endpoint,
            "model": d.model,
            "errors": {"object": "list", "data": d.errors} if d.errors else None,
            "input_file_id": d.input_file_id,
            "completion_window": d.completion_window,
            "status": self.status.value,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": d.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": d.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": d.total, "completed": self.completed, "failed": self.failed},
            "metadata": d.metadata,
        }


_INT_FIELDS = (
    "loaded",
    "completed",
    "failed",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)

# ARGV: prefix, bid, tenant, created_at, cap, doc, status, failed
_CREATE = """
local prefix, bid, tenant = ARGV[1], ARGV[2], ARGV[3]
local active = prefix .. 'bactive:' .. tenant
if ARGV[7] ~= 'failed' and redis.call('SCARD', active) >= tonumber(ARGV[5]) then return 0 end
local key = prefix .. 'batch:' .. bid
redis.call('HSET', key, 'doc', ARGV[6], 'status', ARGV[7], 'loaded', 0, 'claims', 0, 'completed', 0, 'failed', ARGV[8])
redis.call('ZADD', prefix .. 'batches:' .. tenant, ARGV[4], bid)
if ARGV[7] == 'failed' then
  redis.call('HSET', key, 'failed_at', ARGV[4])
else
  redis.call('ZADD', prefix .. 'bactive', ARGV[4], bid)
  redis.call('SADD', active, bid)
end
return 1
"""

# ARGV: prefix, bid, good, chunk, now -> status after the step
_LOAD = """
local prefix, bid = ARGV[1], ARGV[2]
local key = prefix .. 'batch:' .. bid
local status = redis.call('HGET', key, 'status')
if status ~= 'validating' then return status end
local loaded, good = tonumber(redis.call('HGET', key, 'loaded')), tonumber(ARGV[3])
local upto = math.min(good, loaded + tonumber(ARGV[4]))
local pend = prefix .. 'bpend:' .. bid
for i = loaded, upto - 1 do redis.call('ZADD', pend, 0, i) end
redis.call('HSET', key, 'loaded', upto)
if upto >= good then
  redis.call('HSET', key, 'status', 'in_progress', 'in_progress_at', math.floor(tonumber(ARGV[5])))
  return 'in_progress'
end
return status
"""

# ARGV: prefix, bid, model, gw, now, lease_s, fraction, demand_slot, beside (-1: no limit)
_TAKE = (
    PUMP_LUA
    + """
local prefix, bid, model, gw, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = prefix .. 'batch:' .. bid
if redis.call('HGET', key, 'status') ~= 'in_progress' then return {'inactive'} end
local pend = prefix .. 'bpend:' .. bid
local free = redis.call('ZRANGEBYSCORE', pend, '-inf', now, 'LIMIT', 0, 1)
if #free == 0 then return {'empty'} end
if redis.call('ZCARD', prefix .. 'q:' .. model) > 0 then return {'busy'} end
local ready = prefix .. 'ready:' .. model
local best = redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES')
if #best == 0 then
  redis.call('HINCRBY', prefix .. 'bdem:' .. model, ARGV[8], 1)
  redis.call('ZADD', prefix .. 'bwait', now, model)
  return {'cold'}
end
local limit = math.max(1, math.floor(cap_of(prefix, model) * tonumber(ARGV[7])))
if tonumber(best[2]) >= limit then return {'busy'} end
local flight = prefix .. 'bflight:' .. model
local beside = tonumber(ARGV[9])
if beside >= 0 then
  local mine = 0
  for _, iid in ipairs(redis.call('HVALS', flight)) do
    if iid == best[1] then mine = mine + 1 end
  end
  if mine >= beside and tonumber(best[2]) > mine then return {'busy'} end
end
local token = bid .. ':' .. redis.call('HINCRBY', key, 'claims', 1)
local line = free[1]
local own = prefix .. 'bown:' .. bid
local lapsed = redis.call('HGET', own, line)
if lapsed then redis.call('HDEL', flight, lapsed) end
redis.call('ZINCRBY', ready, 1, best[1])
redis.call('HSET', prefix .. 'gw:' .. gw .. ':slots', token, model .. '|' .. best[1])
redis.call('ZADD', pend, now + tonumber(ARGV[6]), line)
redis.call('HSET', own, line, token)
redis.call('HSET', flight, token, best[1])
redis.call('HSET', key, 'imodel', model)
touch(prefix, model)
return {'line', line, best[1], token}
"""
)

# ARGV: prefix, bid, line, token, field ('completed' or 'failed'), gw -> 1 when recorded; the claim's slot
# (booked under gw with the token as its id) is given back either way, as `Routing.release` does.
_FINISH = (
    PUMP_LUA
    + """
local prefix, bid, line, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local slots = prefix .. 'gw:' .. ARGV[6] .. ':slots'
local booked = redis.call('HGET', slots, token)
if booked then
  redis.call('HDEL', slots, token)
  local sep = string.find(booked, '|', 1, true)
  unload(prefix, string.sub(booked, 1, sep - 1), string.sub(booked, sep + 1))
  pump(prefix, string.sub(booked, 1, sep - 1))
end
local key = prefix .. 'batch:' .. bid
local status = redis.call('HGET', key, 'status')
if status ~= 'in_progress' and status ~= 'cancelling' then return 0 end
local own = prefix .. 'bown:' .. bid
if redis.call('HGET', own, line) ~= token then return 0 end
redis.call('HDEL', own, line)
local imodel = redis.call('HGET', key, 'imodel')
redis.call('HDEL', prefix .. 'bflight:' .. imodel, token)
touch(prefix, imodel)
redis.call('ZREM', prefix .. 'bpend:' .. bid, line)
redis.call('HSET', prefix .. 'bdone:' .. bid, line, token)
redis.call('HINCRBY', key, ARGV[5], 1)
return 1
"""
)

# ARGV: prefix, bid, line, token: give a claimed line back at once (its request is to be retried)
_UNCLAIM = """
local own = ARGV[1] .. 'bown:' .. ARGV[2]
if redis.call('HGET', own, ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('HDEL', own, ARGV[3])
local imodel = redis.call('HGET', ARGV[1] .. 'batch:' .. ARGV[2], 'imodel')
redis.call('HDEL', ARGV[1] .. 'bflight:' .. imodel, ARGV[4])
redis.call('SADD', ARGV[1] .. 'dirty', imodel)
redis.call('ZADD', ARGV[1] .. 'bpend:' .. ARGV[2], 'XX', 0, ARGV[3])
return 1
"""

# ARGV: prefix, bid, deadline, then line/token pairs -> lines no longer owned
_RENEW = """
local own, pend = ARGV[1] .. 'bown:' .. ARGV[2], ARGV[1] .. 'bpend:' .. ARGV[2]
local lost = {}
for i = 4, #ARGV, 2 do
  if redis.call('HGET', own, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZADD', pend, 'XX', ARGV[3], ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# ARGV: prefix, bid, now -> the status after the step
_CANCEL = """
local key = ARGV[1] .. 'batch:' .. ARGV[2]
local status = redis.call('HGET', key, 'status')
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', key, 'status', 'cancelling', 'cancelling_at', math.floor(tonumber(ARGV[3])))
  return 'cancelling'
end
return status
"""

# ARGV: prefix, bid, runner, now, lease_s -> the final status to finalize with, or ''
_BEGIN_FINALIZE = """
local prefix, bid, runner, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = prefix .. 'batch:' .. bid
local status = redis.call('HGET', key, 'status')
local pend = prefix .. 'bpend:' .. bid
local doc = cjson.decode(redis.call('HGET', key, 'doc'))
local final = ''
if status == 'in_progress' then
  if redis.call('ZCARD', pend) == 0 then final = 'completed'
  elseif now >= doc['expires_at'] then final = 'expired' end
elseif status == 'validating' then
  if now >= doc['expires_at'] then final = 'expired' end
elseif status == 'cancelling' then
  if redis.call('ZCOUNT', pend, '(' .. ARGV[4], '+inf') == 0 then final = 'cancelled' end
elseif status == 'finalizing' then
  if tonumber(redis.call('HGET', key, 'fin_deadline') or '0') < now then final = redis.call('HGET', key, 'final') end
end
if final == '' then return '' end
redis.call('HSET', key, 'status', 'finalizing', 'final', final, 'fin_owner', runner,
  'fin_deadline', now + tonumber(ARGV[5]))
if not redis.call('HGET', key, 'finalizing_at') then redis.call('HSET', key, 'finalizing_at', math.floor(now)) end
return final
"""

# ARGV: prefix, bid, runner, now, output_file_id, error_file_id, ttl_s -> 1 when the batch reached its final
# status (its record then expires with its result files)
_COMPLETE = """
local prefix, bid, runner = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'batch:' .. bid
if redis.call('HGET', key, 'status') ~= 'finalizing' or redis.call('HGET', key, 'fin_owner') ~= runner then
  return 0
end
local final = redis.call('HGET', key, 'final')
redis.call('HSET', key, 'status', final, final .. '_at', math.floor(tonumber(ARGV[4])))
if ARGV[5] ~= '' then redis.call('HSET', key, 'output_file_id', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', key, 'error_file_id', ARGV[6]) end
redis.call('HDEL', key, 'fin_owner', 'fin_deadline')
local imodel = redis.call('HGET', key, 'imodel')
if imodel then
  for _, token in ipairs(redis.call('HVALS', prefix .. 'bown:' .. bid)) do
    redis.call('HDEL', prefix .. 'bflight:' .. imodel, token)
  end
  redis.call('SADD', prefix .. 'dirty', imodel)
end
local tenant = cjson.decode(redis.call('HGET', key, 'doc'))['tenant']
redis.call('ZREM', prefix .. 'bactive', bid)
redis.call('SREM', prefix .. 'bactive:' .. tenant, bid)
redis.call('DEL', prefix .. 'bpend:' .. bid, prefix .. 'bown:' .. bid, prefix .. 'bdone:' .. bid)
redis.call('EXPIRE', key, math.max(1, math.ceil(tonumber(ARGV[7]))))
return 1
"""


class TakeOutcome(StrEnum):
    LINE = "line"
    """A line was claimed and a slot taken for it."""
    EMPTY = "empty"
    """No free line (all done or claimed)."""
    BUSY = "busy"
    """Interactive requests wait, or the instances have no idle capacity: try later."""
    COLD = "cold"
    """No ready instance (recorded as batch demand)."""
    INACTIVE = "inactive"
    """The batch is not in progress (validating, cancelling, finalizing or final)."""


class Take(BaseModel):
    outcome: TakeOutcome
    line: int = -1
    instance_id: str = ""
    token: str = ""
    """The claim's token: the key of the line's result and of its slot (`Routing.release(gw, token)`)."""


_RUNNING = frozenset({BatchStatus.VALIDATING.value, BatchStatus.IN_PROGRESS.value})
"""Statuses whose lines still want to run (a cancelling batch starts no more lines)."""


class BatchBacklog(BaseModel):
    """One running batch's lines still to do, for the launcher."""

    bid: str
    model: str
    resolved: bool
    """True when `model` is the base model its lines ran on; False: the client's name, to be resolved."""
    pending: int


class Batches:
    """The atomic steps of batches and their lines."""

    def __init__(self, redis: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = redis
        self.keys = keys or Keys()
        self._create = redis.register_script(_CREATE)
        self._load = redis.register_script(_LOAD)
        self._take = redis.register_script(_TAKE)
        self._finish = redis.register_script(_FINISH)
        self._unclaim = redis.register_script(_UNCLAIM)
        self._renew = redis.register_script(_RENEW)
        self._cancel = redis.register_script(_CANCEL)
        self._begin_finalize = redis.register_script(_BEGIN_FINALIZE)
        self._complete = redis.register_script(_COMPLETE)

    @property
    def prefix(self) -> str:
        return self.keys.prefix

    async def create(self, doc: BatchDoc, *, cap: int) -> bool:
        """Record a new batch (failed at once when no line is valid); False when its tenant has `cap` active."""
        status = BatchStatus.VALIDATING if doc.good > 0 else BatchStatus.FAILED
        args: list[str | int] = [self.prefix, doc.id, doc.tenant, doc.created_at, cap, doc.model_dump_json()]
        return bool(await self._create(args=[*args, status.value, doc.total - doc.good]))

    async def load(self, bid: str, *, good: int, chunk: int, now_s: float) -> BatchStatus:
        """Make up to `chunk` more lines claimable; the batch turns in_progress when all are."""
        return BatchStatus(text(await self._load(args=[self.prefix, bid, good, chunk, repr(now_s)])))

    async def take(
        self,
        bid: str,
        model: str,
        gateway_id: str,
        *,
        now_s: float,
        lease_s: float,
        fraction: float,
        beside: int | None = None,
    ) -> Take:
        """Claim a free line together with an idle slot on the model's least-loaded instance (one round trip).

        `beside`: batch lines that instance may run while it also serves interactive requests (None: up
        to `fraction` of its cap like an idle one).
        """
        slot = int(now_s // DEMAND_SLOT_S)
        limit = -1 if beside is None else beside
        res: list[Any] = await self._take(
            args=[self.prefix, bid, model, gateway_id, repr(now_s), repr(lease_s), repr(fraction), slot, limit]
        )
        outcome = TakeOutcome(text(res[0]))
        if outcome is not TakeOutcome.LINE:
            return Take(outcome=outcome)
        return Take(outcome=outcome, line=int(res[1]), instance_id=text(res[2]), token=text(res[3]))

    async def finish(self, bid: str, line: int, token: str, *, ok: bool, gateway_id: str) -> bool:
        """Record the line's result as the one (False: another claim owns the line, or it is done), and give
        the claim's slot back (in the same round trip)."""
        field = "completed" if ok else "failed"
        return bool(await self._finish(args=[self.prefix, bid, line, token, field, gateway_id]))

    async def unclaim(self, bid: str, line: int, token: str) -> bool:
        """Free a claimed line at once, to be run again."""
        return bool(await self._unclaim(args=[self.prefix, bid, line, token]))

    async def renew(self, bid: str, claims: list[tuple[int, str]], *, now_s: float, lease_s: float) -> list[int]:
        """Extend the leases of these claims; returns the lines no longer owned by them."""
        if not claims:
            return []
        flat: list[str | int] = []
        for line, token in claims:
            flat.extend((line, token))
        res: list[Any] = await self._renew(args=[self.prefix, bid, repr(now_s + lease_s), *flat])
        return [int(r) for r in res]

    async def cancel(self, bid: str, *, now_s: float) -> BatchStatus:
        return BatchStatus(text(await self._cancel(args=[self.prefix, bid, repr(now_s)])))

    async def begin_finalize(self, bid: str, runner: str, *, now_s: float, lease_s: float) -> BatchStatus | None:
        """Become the batch's finalizer when it is due (all lines done, expired, or cancelled and drained)."""
        res = text(await self._begin_finalize(args=[self.prefix, bid, runner, repr(now_s), repr(lease_s)]))
        return BatchStatus(res) if res else None

    async def complete(
        self, bid: str, runner: str, *, now_s: float, output_file_id: str, error_file_id: str, ttl_s: float
    ) -> bool:
        """Give the batch its final status and result files; its line state is deleted, its record kept `ttl_s`."""
        args = [self.prefix, bid, runner, repr(now_s), output_file_id, error_file_id, repr(ttl_s)]
        return bool(await self._complete(args=args))

    async def done_tokens(self, bid: str) -> dict[int, str]:
        """Line -> the token of the claim whose result was recorded."""
        raw = await awaited(self.redis.hgetall(self.keys.batch_done(bid)))
        return {int(text(k)): text(v) for k, v in raw.items()}

    async def get(self, bid: str) -> BatchRecord | None:
        raw = await awaited(self.redis.hgetall(self.keys.batch(bid)))
        return _record(raw)

    async def many(self, bids: list[str]) -> list[BatchRecord | None]:
        if not bids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hgetall(self.keys.batch(bid))
            rows = await pipe.execute()
        return [_record(r) for r in rows]

    async def listing(self, tenant: str) -> list[BatchRecord]:
        """A tenant's batches, newest first; ids whose record expired are dropped from the index."""
        bids = [text(b) for b in await self.redis.zrevrange(self.keys.tenant_batches(tenant), 0, -1)]
        records = await self.many(bids)
        gone = [bid for bid, rec in zip(bids, records, strict=True) if rec is None]
        if gone:
            await awaited(self.redis.zrem(self.keys.tenant_batches(tenant), *gone))
        return [rec for rec in records if rec is not None]

    async def active(self) -> list[str]:
        """Every batch not yet in a final state, oldest first."""
        return [text(b) for b in await self.redis.zrange(self.keys.batches_active, 0, -1)]

    async def pending_lines(self, bid: str) -> int:
        return int(await self.redis.zcard(self.keys.batch_pending(bid)))

    async def backlog(self) -> list[BatchBacklog]:
        """Every running batch's lines without a recorded result (free or leased), in two round trips.

        `model` is the model the batch's lines ran on (`imodel`, a base model), or the client's name
        while no line has run yet (the caller resolves it).
        """
        bids = await self.active()
        if not bids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hmget(self.keys.batch(bid), ["status", "imodel", "doc"])
                pipe.zcard(self.keys.batch_pending(bid))
            rows = await pipe.execute()
        out: list[BatchBacklog] = []
        for bid, (status, imodel, doc), pending in zip(bids, rows[::2], rows[1::2], strict=True):
            if status is None or text(status) not in _RUNNING or doc is None:
                continue
            model = text(imodel) if imodel is not None else BatchDoc.model_validate_json(text(doc)).model
            out.append(BatchBacklog(bid=bid, model=model, resolved=imodel is not None, pending=int(pending)))
        return out

    async def waiting_models(self, *, since_s: float) -> list[str]:
        """Models a batch line found without a ready instance since `since_s` (batch demand)."""
        return sorted(text(m) for m in await self.redis.zrangebyscore(self.keys.batch_waiting, since_s, "+inf"))


def _record(raw: dict[Any, Any]) -> BatchRecord | None:
    if not raw:
        return None
    f = {text(k): text(v) for k, v in raw.items()}
    if "doc" not in f or "status" not in f:
        return None
    values: dict[str, Any] = {k: int(float(f[k])) for k in _INT_FIELDS if k in f}
    for name in ("output_file_id", "error_file_id", "final"):
        if name in f:
            values[name] = f[name]
    return BatchRecord(doc=BatchDoc.model_validate_json(f["doc"]), status=BatchStatus(f["status"]), **values)
