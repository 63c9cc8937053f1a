"""Per-key and per-tenant request limits, booked in one atomic step (a Lua script).

- requests per minute per key: a fixed one-minute window (`Keys.key_rpm`);
- concurrent requests per key (`ApiKeyRecord.concurrency_limit`) and per tenant
  (`TenantSpec.max_concurrent_requests`): sorted sets of `holder|request` members
  (`Keys.key_concurrency`, `Keys.tenant_concurrency`). A holder is a gateway process, whose members
  are dropped once its lease lapsed, or `async` for an async request, whose member lives until the
  request is done or gone, whichever gateway runs it (so async mode cannot escape the limits).

Both sets are checked before either is booked: a refusal books nothing.
"""

from __future__ import annotations

ASYNC_HOLDER = "async"
"""The holder of async requests' members: they live as long as the request is unfinished."""

# ARGV: prefix, key_id, tenant, holder, rid, now_s, rpm_limit, key_limit, tenant_limit (0 = none)
# -> {'ok', 0} | {'rpm', retry_after_s} | {'concurrency', 1} | {'tenant', 1}
ACQUIRE_LUA = """
local prefix, kid, tenant, holder, rid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, rpm, kconc, tconc = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local rk = prefix .. 'klim:' .. kid .. ':rpm:' .. math.floor(now / 60)
if rpm > 0 and tonumber(redis.call('GET', rk) or '0') >= rpm then
  return {'rpm', math.ceil(60 - (now % 60))}
end
local function full(key, limit)
  if redis.call('ZCARD', key) < limit then return false end
  for _, m in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local bar = string.find(m, '|', 1, true)
    local g, r = string.sub(m, 1, bar - 1), string.sub(m, bar + 1)
    local alive
    if g == 'async' then
      local state = redis.call('HGET', prefix .. 'async:' .. r, 'state')
      alive = state and state ~= 'done'
    else
      local lease = redis.call('ZSCORE', prefix .. 'gateways', g)
      alive = lease and tonumber(lease) >= now
    end
    if not alive then redis.call('ZREM', key, m) end
  end
  return redis.call('ZCARD', key) >= limit
end
local kkey = prefix .. 'klim:' .. kid .. ':conc'
local tkey = prefix .. 'tlim:' .. tenant .. ':conc'
if kconc > 0 and full(kkey, kconc) then return {'concurrency', 1} end
if tconc > 0 and full(tkey, tconc) then return {'tenant', 1} end
local member = holder .. '|' .. rid
if kconc > 0 then
  redis.call('ZADD', kkey, now, member)
  redis.call('EXPIRE', kkey, 86400)
end
if tconc > 0 then
  redis.call('ZADD', tkey, now, member)
  redis.call('EXPIRE', tkey, 86400)
end
if rpm > 0 then
  redis.call('INCR', rk)
  redis.call('EXPIRE', rk, 120)
end
return {'ok', 0}
"""
