"""Site limits for tenants: what a tenant's models may ask for, and the GPUs its jobs may hold.

Two places enforce them, with the same effective limits (`effective_limits`: the tenant's own
`TenantSpec.limits`, else the site's `registry.tenant_limits`):

- the admin API, when a self-service key registers or changes a model (`check_spec`) or warms
  one (`check_warm`): every policy value and resource is capped, partitions, accounts and QOS
  must be on the allow-lists; a refusal is one line (403) and writes nothing;
- the launcher, before each `sbatch` of a tenant-owned model (`TenantBudget.admit`): the
  allow-lists again (limits may have changed since registration), the GPUs the tenant's instances
  hold at once, and the GPU-hours granted per UTC day, booked in one atomic step.

GPU-hours are charged at submission for the job's whole time limit (the most it can hold), so a
tenant can never exceed its daily budget; unused time is not refunded.

Keys: `Keys.tenant_gpus` (instance id -> GPUs, entries of ended instances dropped as they are
seen) and `Keys.tenant_gpu_hours` (one per tenant and UTC day, expiring after two days).
"""

from __future__ import annotations

import math
from typing import Any

import redis.asyncio as aioredis

from warmpool.errors import NotPermitted
from warmpool.events import EventLog
from warmpool.keys import Keys
from warmpool.redisio import awaited, text
from warmpool.settings import TenantLimits
from warmpool.specs import ModelSpec
from warmpool.tenants import TenantSpec, TenantStore

DAY_S = 86_400


def effective_limits(site: TenantLimits, tenant: TenantSpec | None) -> TenantLimits:
    """The tenant's own limits where set, the site's elsewhere."""
    if tenant is None:
        return site
    own = tenant.limits.model_dump(exclude_none=True)
    return site.model_copy(update=own)


def _over(value: float | None, cap: float | None) -> bool:
    return value is not None and cap is not None and value > cap


def check_spec(spec: ModelSpec, limits: TenantLimits, tenant: str) -> None:
    """Refuse (`NotPermitted`, one line) a model a tenant's self-service key may not register as it is."""
    p, r = spec.policy, spec.resources
    caps: list[tuple[str, float | None, float | None]] = [
        ("policy.min_replicas", p.min_replicas, limits.max_min_replicas),
        ("policy.max_replicas", p.max_replicas, limits.max_replicas),
        ("policy.keepalive_min_s", p.keepalive_min_s, limits.max_keepalive_s),
        ("policy.keepalive_max_s", p.keepalive_max_s, limits.max_keepalive_s),
        ("policy.cold_wait_budget_s", p.cold_wait_budget_s, limits.max_cold_wait_budget_s),
        ("policy.warm_wait_budget_s", p.warm_wait_budget_s, limits.max_warm_wait_budget_s),
        ("policy.queue_max", p.queue_max, limits.max_queue),
        ("resources.gpus", r.gpus * r.nodes, limits.max_gpus_per_instance),
        ("resources.gpus", r.gpus * r.nodes, limits.max_gpus),
        ("resources.time_limit_min", r.time_limit_min, limits.max_time_limit_min),
    ]
    for param, value, cap in caps:
        if _over(value, cap):
            raise NotPermitted(f"{param}={value:g} exceeds tenant {tenant}'s limit of {cap:g}", param=param)
    _check_allowed(spec, limits, tenant)


def _check_allowed(spec: ModelSpec, limits: TenantLimits, tenant: str) -> None:
    r = spec.resources
    named: list[tuple[str, list[str], list[str] | None]] = [
        ("resources.partitions", r.partitions, limits.partitions),
        ("resources.qos", r.qos, limits.qos),
        ("resources.account", [r.account] if r.account else [], limits.accounts),
    ]
    for param, values, allowed in named:
        if allowed is None:
            continue
        for value in values:
            if value not in allowed:
                offer = ", ".join(allowed) if allowed else "none: the cluster's default only"
                raise NotPermitted(f"{param}: {value!r} is not allowed for tenant {tenant} ({offer})", param=param)


def check_account(tenant: TenantSpec, limits: TenantLimits) -> None:
    """Refuse a tenant whose default Slurm account is not one the site (or its own limits) allow."""
    allowed = limits.accounts
    if tenant.account is not None and allowed is not None and tenant.account not in allowed:
        offer = ", ".join(allowed) if allowed else "none: list it in registry.tenant_limits.accounts first"
        raise NotPermitted(
            f"account: {tenant.account!r} is not allowed for tenant {tenant.name} ({offer})", param="account"
        )


def with_tenant_account(spec: ModelSpec, tenant: TenantSpec | None) -> ModelSpec:
    """`spec` with its tenant's default account when it names none (checked against the allow-list at `admit`)."""
    if tenant is None or tenant.account is None or spec.resources.account is not None:
        return spec
    return spec.model_copy(update={"resources": spec.resources.model_copy(update={"account": tenant.account})})


def check_warm(duration_s: float, limits: TenantLimits, tenant: str) -> None:
    if _over(duration_s, limits.max_warm_s):
        raise NotPermitted(
            f"duration_s={duration_s:g} exceeds tenant {tenant}'s limit of {limits.max_warm_s:g}", param="duration_s"
        )


# ARGV: prefix, tenant, iid, gpus, max_gpus (-1 = none), gpu_hours, max_gpu_hours (-1 = none), day
# -> {'ok'} | {'gpus', held} | {'gpu_hours', used}
_ADMIT = """
local prefix, tenant, iid = ARGV[1], ARGV[2], ARGV[3]
local gpus, max_gpus = tonumber(ARGV[4]), tonumber(ARGV[5])
local hours, max_hours = tonumber(ARGV[6]), tonumber(ARGV[7])
local held_key = prefix .. 'tgpu:' .. tenant
local day_key = prefix .. 'tgpuh:' .. tenant .. ':' .. ARGV[8]
local held = 0
local rows = redis.call('ZRANGE', held_key, 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local state = redis.call('HGET', prefix .. 'inst:' .. rows[i], 'state')
  if (not state) or state == '"gone"' or state == '"failed"' then
    redis.call('ZREM', held_key, rows[i])
  else
    held = held + tonumber(rows[i + 1])
  end
end
if max_gpus >= 0 and held + gpus > max_gpus then return {'gpus', tostring(held)} end
local used = tonumber(redis.call('GET', day_key) or '0')
if max_hours >= 0 and used + hours > max_hours + 1e-9 then return {'gpu_hours', tostring(used)} end
redis.call('ZADD', held_key, gpus, iid)
redis.call('INCRBYFLOAT', day_key, hours)
redis.call('EXPIRE', day_key, 2 * 86400)
return {'ok'}
"""


class TenantBudget:
    """The submission-time check of tenant-owned models (`admit`), called by the launcher before `sbatch`."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, site: TenantLimits) -> None:
        self.redis = redis
        self.keys = keys
        self.site = site
        self.tenants = TenantStore(redis, keys)
        self.events = EventLog(redis, keys)
        self._admit = redis.register_script(_ADMIT)

    async def refusal(self, spec: ModelSpec, iid: str, *, now_s: float) -> str | None:
        """Why instance `iid` of `spec` may not be submitted now (None: booked, go ahead)."""
        tenant_name = spec.owner_tenant
        if tenant_name is None:
            return None
        tenant = await self.tenants.get(tenant_name)
        limits = effective_limits(self.site, tenant)
        try:
            _check_allowed(spec, limits, tenant_name)
        except NotPermitted as exc:
            return str(exc)
        r = spec.resources
        gpus = r.gpus * r.nodes
        hours = gpus * r.time_limit_min / 60.0
        res: list[Any] = await self._admit(
            args=[
                self.keys.prefix,
                tenant_name,
                iid,
                gpus,
                -1 if limits.max_gpus is None else limits.max_gpus,
                repr(hours),
                -1.0 if limits.max_gpu_hours_per_day is None else repr(limits.max_gpu_hours_per_day),
                math.floor(now_s / DAY_S),
            ]
        )
        what = text(res[0])
        if what == "gpus":
            return (
                f"tenant {tenant_name} holds {text(res[1])} GPU(s); {gpus} more exceed its limit of {limits.max_gpus}"
            )
        if what == "gpu_hours":
            used = float(text(res[1]))
            return (
                f"tenant {tenant_name} was granted {used:g} GPU-hours today; {hours:g} more exceed its limit "
                f"of {limits.max_gpu_hours_per_day:g}"
            )
        return None

    async def with_account(self, spec: ModelSpec) -> ModelSpec:
        """The spec a tenant-owned model's job is rendered from: its tenant's account filled in."""
        if spec.owner_tenant is None or spec.resources.account is not None:
            return spec
        return with_tenant_account(spec, await self.tenants.get(spec.owner_tenant))

    async def admit(self, spec: ModelSpec, iid: str, *, now_s: float) -> bool:
        """Book the submission, or record why not (event `tenant.limit`) and return False."""
        reason = await self.refusal(spec, iid, now_s=now_s)
        if reason is None:
            return True
        await self.events.record("tenant.limit", now_s=now_s, model=spec.name, tenant=spec.owner_tenant, reason=reason)
        return False

    async def refund(self, spec: ModelSpec, iid: str, *, now_s: float) -> None:
        """Give back what `admit` booked for a job Slurm refused (an accounting limit): no GPUs held, no
        GPU-hours granted, so a model waiting on a QOS limit cannot drain its tenant's daily budget."""
        tenant = spec.owner_tenant
        if tenant is None:
            return
        r = spec.resources
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.tenant_gpus(tenant), iid)
            day_key = self.keys.tenant_gpu_hours(tenant, math.floor(now_s / DAY_S))
            pipe.incrbyfloat(day_key, -r.gpus * r.nodes * r.time_limit_min / 60.0)
            await pipe.execute()

    async def held_gpus(self, tenant: str) -> float:
        """GPUs booked for the tenant's instances (ended ones may still count until the next `admit`)."""
        rows = await awaited(self.redis.zrange(self.keys.tenant_gpus(tenant), 0, -1, withscores=True))
        return float(sum(score for _, score in rows))
